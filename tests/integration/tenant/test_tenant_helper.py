"""`mushishi-tenant guard|run|drain` as systemd runs them: real processes, a real notify
socket, the vLLM stand-in as the tenant's command; `run` and `drain` in a network namespace
where the kernel confines them, as a unit's IPAddressDeny= would."""

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


@pytest.fixture
def box(tmp_path: Path) -> dict[str, object]:
    """A config with one stand-in vLLM tenant and a simulated GPU."""
    port = free_port()
    gpu = tmp_path / "gpu.json"
    gpu.write_text(json.dumps({"total_mib": 32607, "used_mib": 500, "processes": []}))
    command = [sys.executable, str(REPO / "tests/standins/vllm_gpu.py"), "--port", str(port),
               "--model", "nemotron", "--load-seconds", "1.0", "--tokens", "6"]
    config = tmp_path / "mushishi.toml"
    config.write_text(f"""
[gpu]
probe = "simulated"
simulated_state = "{gpu}"
[modes.forensic]
tenants = ["vllm"]
[tenants.vllm]
command = {json.dumps(command)}
health_url = "http://127.0.0.1:{port}/v1/models"
busy_probe = {{ kind = "vllm", url = "http://127.0.0.1:{port}/metrics" }}
vram_mib = 28000
drain_timeout_s = 30
stop_timeout_s = 10
""")
    return {"config": config, "gpu": gpu, "port": port}


def run_env(notify: NotifySocket, runtime_directory: Path | None = None) -> dict[str, str]:
    extra = {"RUNTIME_DIRECTORY": str(runtime_directory)} if runtime_directory else {}
    return {**os.environ, "NOTIFY_SOCKET": str(notify.path), "MUSHISHI_CONFIG": "", **extra}


class HttpError(Exception):
    """curl could not get an answer."""


def http(netns: Namespaces, method: str, url: str, body: bytes | None = None) -> bytes:
    """One request from inside the tenant's namespace."""
    result = subprocess.run(
        ["ip", "netns", "exec", netns.tenant, "curl", "-sf", "--max-time", "10", "-X", method,
         "-H", "Content-Type: application/json", *(["--data-binary", "@-"] if body else []),
         url], input=body, capture_output=True, check=False)
    if result.returncode != 0:
        raise HttpError(f"curl {url} exited {result.returncode}")
    return result.stdout


@pytest.fixture
def running(box: dict[str, object], notify_socket: NotifySocket, confined_netns: Namespaces,
            tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    # Its own session, so the teardown can end the runner and the tenant it started.
    runner = subprocess.Popen(["ip", "netns", "exec", confined_netns.tenant, TENANT,
                               "--config", str(box["config"]), "run", "vllm"],
                              env=run_env(notify_socket, tmp_path / "run"), text=True,
                              stderr=subprocess.PIPE, start_new_session=True)
    yield runner
    if runner.poll() is None:
        runner.send_signal(signal.SIGTERM)  # the runner stops its tenant, as under systemd
        with contextlib.suppress(subprocess.TimeoutExpired):
            runner.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(runner.pid, signal.SIGKILL)
    runner.wait()


def test_run_reports_ready_only_once_health_answers(box: dict[str, object],
                                                    notify_socket: NotifySocket,
                                                    confined_netns: Namespaces,
                                                    running: subprocess.Popen[str]) -> None:
    port = box["port"]
    waiting = notify_socket.wait_for("STATUS=waiting for")
    assert f"http://127.0.0.1:{port}/v1/models" in waiting
    notify_socket.wait_for("READY=1", timeout=60)
    models = http(confined_netns, "GET", f"http://127.0.0.1:{port}/v1/models")
    assert json.loads(models)["data"][0]["id"] == "nemotron"
    extend = notify_socket.wait_for("EXTEND_TIMEOUT_USEC=")
    assert extend == f"EXTEND_TIMEOUT_USEC={(900 + 30) * 1_000_000}"
    running.send_signal(signal.SIGTERM)
    assert running.wait(timeout=30) == 0
    with pytest.raises(HttpError):
        http(confined_netns, "GET", f"http://127.0.0.1:{port}/v1/models")


def test_drain_waits_for_the_streamed_request_then_returns(box: dict[str, object],
                                                           notify_socket: NotifySocket,
                                                           confined_netns: Namespaces,
                                                           running: subprocess.Popen[str]
                                                           ) -> None:
    port = box["port"]
    netns = confined_netns
    notify_socket.wait_for("READY=1", timeout=60)
    http(netns, "POST", f"http://127.0.0.1:{port}/standin/hold")
    stream = subprocess.Popen(
        ["ip", "netns", "exec", netns.tenant, "curl", "-sN", "-H",
         "Content-Type: application/json", "-d",
         json.dumps({"model": "nemotron", "stream": True, "messages": []}),
         f"http://127.0.0.1:{port}/v1/chat/completions"], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while json.loads(http(netns, "GET", f"http://127.0.0.1:{port}/standin/state")
                     )["running"] != 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    drain = subprocess.Popen(["ip", "netns", "exec", netns.tenant, TENANT, "--config",
                              str(box["config"]), "drain", "vllm"],
                             env=run_env(notify_socket), text=True, stderr=subprocess.PIPE)
    try:
        status = notify_socket.wait_for("STATUS=draining")
        assert status.startswith("STATUS=draining: 1 request(s) running, 0 waiting (vLLM)")
        time.sleep(1.0)
        assert drain.poll() is None, "drain returned with a request in flight"
        http(netns, "POST", f"http://127.0.0.1:{port}/standin/release")
        assert drain.wait(timeout=20) == 0
    finally:
        if drain.poll() is None:
            drain.kill()
    out, _ = stream.communicate(timeout=10)
    assert out.rstrip().endswith("data: [DONE]")
    assert '"finish_reason": "stop"' in out


def test_guard_refuses_a_tenant_that_does_not_fit(box: dict[str, object],
                                                  notify_socket: NotifySocket) -> None:
    gpu: Path = box["gpu"]  # type: ignore[assignment]
    gpu.write_text(json.dumps({"total_mib": 32607, "used_mib": 10000, "processes": []}))
    result = subprocess.run([TENANT, "--config", str(box["config"]), "guard", "vllm"],
                            env=run_env(notify_socket), capture_output=True, text=True,
                            check=False)
    assert result.returncode == 1
    status = notify_socket.wait_for("STATUS=")
    assert status == ("STATUS=tenant vllm does not fit: needs 28000 MiB of VRAM, 22607 MiB "
                      "free of 32607 MiB; held by: 10000 MiB not attributed to a process")
    gpu.write_text(json.dumps({"total_mib": 32607, "used_mib": 4000, "processes": []}))
    fits = subprocess.run([TENANT, "--config", str(box["config"]), "guard", "vllm"],
                          env=run_env(notify_socket), capture_output=True, check=False)
    assert fits.returncode == 0


def test_unknown_tenant_is_a_config_error(box: dict[str, object]) -> None:
    result = subprocess.run([TENANT, "--config", str(box["config"]), "guard", "nope"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 78
