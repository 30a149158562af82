"""`mushishi-tenant run` declares a plain-process tenant ready only when the kernel confines
it, publishes every probe, notices a rule removed while it runs, and starts the tenant with
telemetry and network fetching off. Real processes in real network namespaces."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.tenant.conftest import NotifySocket
from tests.integration.tenant.netns import Namespaces
from tests.paths import BINDIR, REPO
from tests.ports import free_port

TENANT = f"{BINDIR}/mushishi-tenant"


class Runner:
    """One `mushishi-tenant run web` inside a namespace, with its config and records."""

    def __init__(self, tmp_path: Path, notify: NotifySocket, netns: Namespaces) -> None:
        self.tmp_path = tmp_path
        self.notify = notify
        self.netns = netns
        self.port = free_port()
        self.run_dir = tmp_path / "run"
        self.process: subprocess.Popen[str] | None = None

    def start(self, *, router: str = "", tenant: str = "") -> subprocess.Popen[str]:
        config = self.tmp_path / "mushishi.toml"
        gpu = self.tmp_path / "gpu.json"
        gpu.write_text(json.dumps({"total_mib": 1000, "used_mib": 0, "processes": []}))
        command = [sys.executable, str(REPO / "tests/standins/json_queue.py"), "--port",
                   str(self.port)]
        config.write_text(f"""
[router]
{router}
[gpu]
probe = "simulated"
simulated_state = "{gpu}"
tenant_probe_interval_s = 0.5
[tenants.web]
command = {json.dumps(command)}
health_url = "http://127.0.0.1:{self.port}/health"
vram_mib = 1
stop_timeout_s = 5
{tenant}
""")
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", self.netns.tenant, TENANT, "--config", str(config), "run",
             "web"],
            env={**os.environ, "NOTIFY_SOCKET": str(self.notify.path), "MUSHISHI_CONFIG": "",
                 "RUNTIME_DIRECTORY": str(self.run_dir)},
            text=True, stderr=subprocess.PIPE, start_new_session=True)
        return self.process

    def record(self) -> dict | None:
        try:
            return json.loads((self.run_dir / "confinement.json").read_text())
        except (OSError, ValueError):
            return None

    def wait_record(self, confined: bool | None, timeout: float = 15) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.record()
            if found is not None and found["confined"] is confined:
                return found
            time.sleep(0.1)
        raise AssertionError(f"published {self.record()}, not confined={confined}")

    def tenant_environment(self) -> dict[str, str]:
        """The environment of the tenant's command (the runner's one child)."""
        assert self.process is not None
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        child = children.read_text().split()[0]
        entries = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        return dict(e.decode().split("=", 1) for e in entries if b"=" in e)

    def stop(self) -> str:
        """SIGTERM, wait, and the runner's stderr."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            _, err = self.process.communicate(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        return err


@pytest.fixture
def confined_runner(tmp_path: Path, notify_socket: NotifySocket, confined_netns: Namespaces
                    ) -> Iterator[Runner]:
    runner = Runner(tmp_path, notify_socket, confined_netns)
    yield runner
    if runner.process is not None:
        runner.stop()


@pytest.fixture
def unconfined_runner(tmp_path: Path, notify_socket: NotifySocket,
                      unconfined_netns: Namespaces) -> Iterator[Runner]:
    runner = Runner(tmp_path, notify_socket, unconfined_netns)
    yield runner
    if runner.process is not None:
        runner.stop()


def test_a_confined_tenant_is_ready_and_its_probe_is_published(confined_runner: Runner
                                                               ) -> None:
    runner = confined_runner
    runner.start()
    ready = runner.notify.wait_for("READY=1", timeout=30)
    assert ready.endswith("confined: from the tenant's unit: the kernel refused a datagram to "
                          "192.0.2.1:9 (EPERM)")
    published = runner.wait_record(True)
    assert published["tenant"] == "web" and published["runtime"] == "process"
    assert published["probe"] == "192.0.2.1:9" and published["interval_s"] == 0.5
    assert abs(published["checked_at"] - time.time()) < 10
    assert runner.stop().count("tenant web ready after") == 1
    assert runner.record() is None  # withdrawn when the tenant stops


def test_an_unconfined_tenant_is_refused_with_one_line(unconfined_runner: Runner) -> None:
    runner = unconfined_runner
    process = runner.start()
    assert process.wait(timeout=30) == 1
    status = runner.notify.wait_for("STATUS=tenant web is not confined")
    assert status == ("STATUS=tenant web is not confined: from the tenant's unit: a datagram to "
                      "192.0.2.1:9 left: nothing refused it within 1 s")
    assert not any(m.startswith("READY=1") for m in runner.notify.messages)
    health = runner.netns.run(runner.netns.tenant, ["curl", "-sf", "--max-time", "2",
                                                    f"http://127.0.0.1:{runner.port}/health"],
                              check=False)
    assert health.returncode != 0, "the refused tenant's command still runs"


def test_removing_the_rule_while_it_runs_is_published_and_shown(confined_runner: Runner
                                                                ) -> None:
    runner = confined_runner
    runner.start()
    runner.notify.wait_for("READY=1", timeout=30)
    runner.netns.run(runner.netns.tenant, "nft delete table inet confine")
    unconfined = runner.wait_record(False)
    assert unconfined["detail"] == ("from the tenant's unit: a datagram to 192.0.2.1:9 left: "
                                    "nothing refused it within 1 s")
    runner.notify.wait_for("STATUS=serving: ", timeout=10)
    assert any("NOT CONFINED" in m for m in runner.notify.messages)
    assert runner.process is not None and runner.process.poll() is None  # still serving
    assert "tenant web is NOT confined" in runner.stop()


def test_not_known_is_ready_unless_the_config_requires_kernel_confinement(
        tmp_path: Path, notify_socket: NotifySocket) -> None:
    # A namespace with no route at all: the probe cannot tell.
    netns = Namespaces(with_box=False)
    netns.names = [netns.tenant]
    subprocess.run(["ip", "netns", "add", netns.tenant], check=True)
    netns.run(netns.tenant, "ip link set lo up")
    try:
        runner = Runner(tmp_path, notify_socket, netns)
        runner.start(router="require_kernel_confinement = true",
                     tenant="start_timeout_s = 3")
        assert runner.process is not None and runner.process.wait(timeout=30) == 1
        waiting = notify_socket.wait_for(
            f"STATUS=waiting for http://127.0.0.1:{runner.port}/health: confinement not known")
        assert "(from the tenant's unit: no route to 192.0.2.1:9 (ENETUNREACH)" in waiting
        assert waiting.endswith("and router.require_kernel_confinement is set")
        notify_socket.wait_for("STATUS=tenant web: not ready within start_timeout_s=3 s")
        assert runner.record() is None
        again = Runner(tmp_path, notify_socket, netns)
        again.start()
        assert "confinement not known: from the tenant's unit: no route" in (
            notify_socket.wait_for("READY=1", timeout=30))
        assert again.wait_record(None)["detail"].startswith("from the tenant's unit: no route")
        again.stop()
    finally:
        netns.destroy()


def test_telemetry_is_off_in_the_tenants_environment_unless_overridden(
        confined_runner: Runner) -> None:
    runner = confined_runner
    runner.start(tenant='env = { HF_HUB_OFFLINE = "0", MODEL_CACHE = "/srv/models" }')
    runner.notify.wait_for("READY=1", timeout=30)
    environment = runner.tenant_environment()
    assert {key: environment.get(key) for key in (
        "VLLM_NO_USAGE_STATS", "DO_NOT_TRACK", "TRANSFORMERS_OFFLINE", "HF_HUB_OFFLINE",
        "MODEL_CACHE")} == {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
                            "TRANSFORMERS_OFFLINE": "1", "HF_HUB_OFFLINE": "0",
                            "MODEL_CACHE": "/srv/models"}
    assert "NOTIFY_SOCKET" not in environment
    journal = runner.stop()
    assert ("tenant web: tenants.web.env sets HF_HUB_OFFLINE='0' over the default "
            "HF_HUB_OFFLINE='1' (telemetry or network fetching off)") in journal
    assert "MODEL_CACHE" not in journal
