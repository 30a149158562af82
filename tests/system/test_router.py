"""mushishi-router as a real unit in a booted systemd: kernel confinement proven, connect-time
refusal of a rebound hostname, the journal record, `mushishi route`, and a restart under load
that drops nothing.

The sandbox's network namespace gets a "cloud" address, 203.0.113.1 (on lo: reachable from
inside, outside router.local_networks), a default route (so the self-check's datagram has
somewhere to go), and stand-in backends run as host processes inside that namespace.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator

import pytest

from devtools.sandbox import Sandbox
from tests.paths import BINDIR
from tests.system import router_load
from tests.system.host_standins import HostStandins, recorded

KEY = "sk-system-test"
SOCKET = "/run/mushishi/router.sock"
CONFIG = f"""
[router]
listen = ["127.0.0.1:4000", "unix:{SOCKET}"]
local_hosts = ["llm.internal"]
connect_timeout_s = 1
probe_interval_s = 0.5
drain_timeout_s = 20

[backends.gpu]
url = "http://llm.internal:8000/v1"
model = "gpu-model"

[backends.cpu]
url = "http://127.0.0.1:8001/v1"
model = "cpu-alias"

[profiles.private]
tier = "T1"
chain = ["gpu"]
queue_timeout_s = 2

[profiles.personal]
tier = "T2"
chain = ["cpu"]

[keys]
"{hashlib.sha256(KEY.encode()).hexdigest()}" = ["private", "personal"]
"""
HOSTS_LOCAL = "127.0.0.1 localhost\n127.0.0.1 llm.internal\n"
HOSTS_REBOUND = "127.0.0.1 localhost\n203.0.113.1 llm.internal\n"
CONNECT_CHECK_OFF = ("[Service]\n# Test only: prove the kernel layer alone.\n"
                     "Environment=MUSHISHI_TEST_DISABLE_CONNECT_CHECK=1\n")


class Standins(HostStandins):
    """Stand-in vLLM backends as host processes inside the sandbox's network namespace."""

    def __init__(self, box: Sandbox) -> None:
        super().__init__(box)
        self.rebound_log = box.shared / "rebound.jsonl"

    def vllm(self, host: str, port: int, model: str, name: str, *extra: str) -> None:
        self.start("tests.standins.vllm", "--host", host, "--port", str(port), "--model", model,
                   "--name", name, *extra)

    def rebound_requests(self) -> list[dict]:
        return recorded(self.rebound_log)


@pytest.fixture(scope="module")
def routed() -> Iterator[tuple[Sandbox, Standins]]:
    box = Sandbox()
    box.boot()
    standins = Standins(box)
    try:
        box.run(["ip", "addr", "add", "203.0.113.1/32", "dev", "lo"])
        box.add_default_route()
        box.write("/etc/hosts", HOSTS_LOCAL)
        # No keep-alive: each request connects, so a rebound name is resolved (and checked) anew.
        standins.vllm("127.0.0.1", 8000, "gpu-model", "gpu", "--token-delay", "0.05", "--close")
        standins.vllm("127.0.0.1", 8001, "cpu-alias", "cpu")
        standins.vllm("203.0.113.1", 8000, "gpu-model", "rebound", "--record",
                      str(standins.rebound_log))
        box.install(CONFIG)
        box.systemctl("start", "mushishi-router.socket")
        yield box, standins
    finally:
        standins.stop()
        box.stop()


def curl(box: Sandbox, path: str, *args: str, check: bool = True) -> tuple[int, str]:
    result = box.run(["curl", "-s", "--max-time", "30", "--unix-socket", SOCKET,
                      "-w", "\n%{http_code}", *args, f"http://router{path}"], check=check)
    body, _, code = result.stdout.rpartition("\n")
    return int(code or 0), body


def chat(box: Sandbox, profile: str, content: str = "a private question") -> tuple[int, dict]:
    code, body = curl(box, "/v1/chat/completions", "-H", f"Authorization: Bearer {KEY}",
                      "-H", "Content-Type: application/json", "-d", json.dumps(
                          {"model": profile, "messages": [{"role": "user", "content": content}]}))
    return code, json.loads(body)


def restart_router(box: Sandbox, dropin: str | None) -> None:
    path = "/etc/systemd/system/mushishi-router.service.d/zz-test.conf"
    if dropin is None:
        box.run(["rm", "-f", path])
    else:
        box.write(path, dropin)
    box.systemctl("daemon-reload")
    box.systemctl("restart", "mushishi-router.service")
    box.wait_for("mushishi-router.service", "active", timeout=60)


def wait_ready(box: Sandbox) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        code, body = curl(box, "/ready", check=False)
        if code == 200:
            return json.loads(body)
        time.sleep(0.2)
    raise AssertionError(f"router never ready: {code} {body}")


def test_unit_reports_all_four_sovereignty_layers_in_force(
    routed: tuple[Sandbox, Standins],
) -> None:
    box, _ = routed
    box.write("/etc/hosts", HOSTS_LOCAL)
    restart_router(box, None)
    ready = wait_ready(box)
    assert ready["sovereignty"]["summary"] == "config ✓, connect-time ✓, kernel ✓, tenants ✓", \
        ready
    assert ready["sovereignty"]["tenants_detail"] == "no tenant is running"
    assert "EPERM" in ready["sovereignty"]["detail"]
    status = box.systemctl("show", "-p", "StatusText", "--value", "mushishi-router").stdout
    assert "sovereignty: config ✓, connect-time ✓, kernel ✓, tenants ✓" in status
    _, body = curl(box, "/metrics")
    assert 'mushishi_router_sovereignty_layer{layer="kernel",state="ok"} 1.0' in body
    assert 'mushishi_router_sovereignty_layer{layer="tenants",state="ok"} 1.0' in body


def test_request_record_is_in_the_journal_by_profile_without_prompt_text(
    routed: tuple[Sandbox, Standins],
) -> None:
    box, _ = routed
    box.write("/etc/hosts", HOSTS_LOCAL)
    wait_ready(box)
    marker = "prompt-" + os.urandom(4).hex()
    code, answer = chat(box, "private", marker)
    assert code == 200, answer
    records = [json.loads(line) for line in box.journal(
        "-u", "mushishi-router", "MUSHISHI_PROFILE=private", "-o", "json").splitlines()]
    served = [r for r in records if r.get("MUSHISHI_OUTCOME") == "success"]
    assert served, records
    record = served[-1]
    assert record["MUSHISHI_TIER"] == "T1" and record["MUSHISHI_BACKEND"] == "gpu"
    assert record["MESSAGE"].startswith("chat/completions private -> gpu: 200 success")
    assert record["_SYSTEMD_UNIT"] == "mushishi-router.service"
    everything = box.journal("-u", "mushishi-router", "-o", "json")
    assert marker not in everything and "gpu-3" not in everything


def test_route_command_explains_the_live_routing(routed: tuple[Sandbox, Standins]) -> None:
    box, _ = routed
    wait_ready(box)
    result = box.run([f"{BINDIR}/mushishi", "route", "--profile", "private"])
    assert result.stdout.splitlines()[0] == "private (T1): gpu would answer"
    assert "sovereignty: config ✓, connect-time ✓, kernel ✓, tenants ✓" in result.stdout


def test_connect_time_check_refuses_a_local_hostname_rebound_to_a_public_address(
    routed: tuple[Sandbox, Standins],
) -> None:
    box, standins = routed
    restart_router(box, None)
    wait_ready(box)
    box.write("/etc/hosts", HOSTS_REBOUND)
    try:
        code, answer = chat(box, "private")
        assert (code, answer["error"]["code"]) == (503, "sovereign_backends_unavailable")
        assert standins.rebound_requests() == []
        log = box.journal("-u", "mushishi-router")
        assert "connect-time check refused 203.0.113.1" in log
        _, metrics = curl(box, "/metrics")
        assert 'mushishi_router_sovereignty_refusals_total{layer="connect-time"}' in metrics
    finally:
        box.write("/etc/hosts", HOSTS_LOCAL)


def test_kernel_alone_stops_the_router_from_reaching_a_non_local_address(
    routed: tuple[Sandbox, Standins],
) -> None:
    box, standins = routed
    restart_router(box, CONNECT_CHECK_OFF)
    try:
        ready = wait_ready(box)
        assert ready["sovereignty"]["connect_time"] is False
        assert ready["sovereignty"]["kernel"] is True
        box.write("/etc/hosts", HOSTS_REBOUND)
        code, answer = chat(box, "private")
        assert (code, answer["error"]["code"]) == (503, "sovereign_backends_unavailable")
        assert standins.rebound_requests() == []  # nothing got through: the kernel said no
        # Control: the address is reachable from the same box by an unconfined process.
        box.run(["curl", "-sf", "--max-time", "5", "http://203.0.113.1:8000/health"])
        control = box.run(["systemd-run", "--wait", "--pipe", "-p", "User=mushishi",
                           "/usr/bin/curl", "-sf", "--max-time", "5", "-o", "/dev/null",
                           "-X", "POST", "-H", "Content-Type: application/json", "-d",
                           '{"model":"gpu-model","messages":[{"role":"user","content":"c"}]}',
                           "http://203.0.113.1:8000/v1/chat/completions"], check=False)
        assert control.returncode == 0, control.stderr
        assert [r["path"] for r in standins.rebound_requests()] == ["/v1/chat/completions"]
    finally:
        box.write("/etc/hosts", HOSTS_LOCAL)
        restart_router(box, None)


def status_json(box: Sandbox) -> dict:
    result = box.run([f"{BINDIR}/mushishi", "status", "--json"], check=False, timeout=60)
    return json.loads(result.stdout)


def test_mushishi_status_names_a_test_only_switch_and_where_it_is_set(
    routed: tuple[Sandbox, Standins],
) -> None:
    """From the service manager's environment (`systemctl set-environment`) and from a unit's
    drop-in, each with its fix; the router's own report says the check is off."""
    box, _ = routed
    restart_router(box, None)
    assert status_json(box)["disabled_checks"] == []
    box.systemctl("set-environment", "MUSHISHI_TEST_DISABLE_CONNECT_CHECK=1")
    try:
        (found,) = status_json(box)["disabled_checks"]
        assert found == {
            "name": "MUSHISHI_TEST_DISABLE_CONNECT_CHECK", "value": "1",
            "what": "turns the router's connect-time sovereignty check off", "unit": None,
            "source": "`systemctl set-environment` (the service manager's environment, "
                      "`systemctl show-environment`)",
            "fix": "`systemctl unset-environment MUSHISHI_TEST_DISABLE_CONNECT_CHECK`, then "
                   "restart the units started since"}
        screen = box.run([f"{BINDIR}/mushishi", "status"], check=False).stdout
        assert ("test-only MUSHISHI_TEST_DISABLE_CONNECT_CHECK=1 (turns the router's "
                "connect-time sovereignty check off) for every unit started from now on, from "
                "`systemctl set-environment`") in screen
    finally:
        box.systemctl("unset-environment", "MUSHISHI_TEST_DISABLE_CONNECT_CHECK")
    restart_router(box, CONNECT_CHECK_OFF)
    try:
        report = status_json(box)
        (found,) = report["disabled_checks"]
        assert (found["unit"], found["source"]) == (
            "mushishi-router.service",
            "drop-in /etc/systemd/system/mushishi-router.service.d/zz-test.conf")
        assert found["fix"] == ("remove its Environment= line, then `systemctl daemon-reload` "
                                "and `systemctl restart mushishi-router.service`")
        assert report["router"]["sovereignty"]["connect_time"] is False
        assert ("test-only switch MUSHISHI_TEST_DISABLE_CONNECT_CHECK=1 (turns the router's "
                "connect-time sovereignty check off) in mushishi-router.service, from drop-in "
                "/etc/systemd/system/mushishi-router.service.d/zz-test.conf: remove its "
                "Environment= line, then `systemctl daemon-reload` and `systemctl restart "
                "mushishi-router.service`") in report["problems"]
    finally:
        restart_router(box, None)
    assert status_json(box)["disabled_checks"] == []


def test_self_check_reports_a_unit_without_ip_address_deny(
    routed: tuple[Sandbox, Standins],
) -> None:
    box, _ = routed
    restart_router(box, "[Service]\nIPAddressDeny=\nIPAddressAllow=\n")
    try:
        ready = wait_ready(box)
        assert ready["sovereignty"]["kernel"] is False
        assert "left the router" in ready["sovereignty"]["detail"]
        log = box.journal("-u", "mushishi-router")
        assert "the kernel does not confine it" in log
    finally:
        restart_router(box, None)


def test_restart_under_load_drops_no_request_and_finishes_the_stream_in_flight(
    routed: tuple[Sandbox, Standins],
) -> None:
    box, _ = routed
    box.write("/etc/hosts", HOSTS_LOCAL)
    wait_ready(box)
    out = box.shared / "load.json"
    load = router_load.start(box, KEY, 400, 8, out)
    stream = router_load.stream(box, KEY, "private", "stream", 60)
    try:
        time.sleep(0.3)
        for _ in range(2):
            box.systemctl("restart", "mushishi-router.service", timeout=60)
            time.sleep(0.5)
        assert load.wait(timeout=240) == 0
        streamed, _ = stream.communicate(timeout=60)
    finally:
        router_load.reap(load, stream)
    results = json.loads(out.read_text())
    assert len(results) == 400
    failures = [r for r in results if r.get("status") != 200]
    assert failures == [], failures[:5]
    assert streamed.rstrip().endswith(b"data: [DONE]"), streamed[-300:]
    restarts = box.journal("-u", "mushishi-router", "-o", "cat")
    assert restarts.count("stopping: draining") >= 2
