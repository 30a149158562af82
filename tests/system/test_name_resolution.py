"""No confined unit can resolve a name, by any path, unless its config needs names (issue 13,
hole 5): proven in a booted systemd against the real systemd-resolved.

The sandbox runs Debian's own systemd-resolved (unpacked by scripts/fetch-systemd-resolved.sh,
never installed on the host) with its stub on 127.0.0.53, its varlink socket and its D-Bus
API, forwarding to a recording DNS stand-in on 127.0.0.1:53 that also plays a local resolver
(dnsmasq); /etc/resolv.conf points at the stub and nsswitch.conf uses nss-resolve, as on
Ubuntu. Each confined unit, installed by `mushishi install` with its real drop-ins, runs
tests/system/resolution_probe.py as its ExecStart (its own sandboxing, cgroup filters and
groups): getaddrinfo, a raw query to the stub and to 127.0.0.1:53 over UDP and TCP, the
varlink call and the D-Bus call must all fail, and the stand-in must record none of their
names. The same probe as an unconfined unit of the same user is the control: every path
works and every name reaches the stand-in.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
import tomlkit

from devtools.sandbox import Sandbox
from tests.paths import BINDIR, EXAMPLE_CONFIG, REPO
from tests.system.host_standins import HostStandins, recorded
from tests.system.resolved import start_resolved

PROBE = f"{BINDIR}/python {REPO}/tests/system/resolution_probe.py"
ATTACKER_ADDRESS = "192.0.2.66"
LOCAL_NAME = "gpu.box.internal"
PATHS = ("getaddrinfo", "stub-udp", "stub-tcp", "loopback-udp", "loopback-tcp", "varlink",
         "dbus")
# The confined units, each as an instance a test can start.
CONFINED = {"mushishi-router.service": "mushishi-router",
            "mushishi-cpu-floor.service": "mushishi-cpu-floor",
            "mushishi-tenant@probe.service": "mushishi-tenant@",
            "mushishi-gpu-prepare@probe.service": "mushishi-gpu-prepare@",
            "mushishi-bench.service": "mushishi-bench"}


def config_text(*, local_hosts: bool) -> str:
    document: Any = tomlkit.parse(EXAMPLE_CONFIG.read_text())
    document["gpu"]["probe"] = "simulated"
    if local_hosts:
        document["router"]["local_hosts"] = [LOCAL_NAME]
        document["backends"]["gpu"]["url"] = f"http://{LOCAL_NAME}:8000/v1"
    return tomlkit.dumps(document)


class Box:
    """The sandbox with resolved running and the DNS stand-in's record."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.record = sandbox.shared / "dns.jsonl"

    def asked(self, nonce: str) -> list[str]:
        """Names the stand-in was asked for that carry `nonce`."""
        return sorted({q["name"] for q in recorded(self.record) if nonce in q["name"]})

    def probe(self, unit: str, *names: str) -> tuple[str, dict[str, str]]:
        """Run the probe as `unit`'s ExecStart (the unit's own sandboxing); its outcomes."""
        nonce = secrets.token_hex(6)
        dropin = f"/etc/systemd/system/{CONFINED[unit]}.service.d/zzz-probe.conf"
        self.sandbox.write(dropin, "[Service]\nType=oneshot\nRestart=no\nExecStartPre=\n"
                           f"ExecStart=\nExecStart={PROBE} {nonce} {' '.join(names)}\n"
                           "ExecStop=\nExecStopPost=\nExecReload=\nWatchdogSec=0\n"
                           "TimeoutStartSec=120\n")
        self.sandbox.systemctl("daemon-reload")
        try:
            started = self.sandbox.systemctl("start", unit, check=False, timeout=180)
            return nonce, self._outcomes(unit, nonce, started.stderr)
        finally:
            self.sandbox.run(["rm", "-f", dropin])
            self.sandbox.systemctl("daemon-reload")
            self.sandbox.systemctl("reset-failed", unit, check=False)

    def control(self, *names: str) -> tuple[str, dict[str, str]]:
        """The same probe as an unconfined unit of user mushishi."""
        nonce = secrets.token_hex(6)
        result = self.sandbox.run(["systemd-run", "--wait", "--pipe", "--quiet",
                                   "-p", "User=mushishi", "-p", "Group=mushishi",
                                   *PROBE.split(), nonce, *names], timeout=180)
        return nonce, _parse(result.stdout, nonce)

    def _outcomes(self, unit: str, nonce: str, why: str) -> dict[str, str]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = self.sandbox.journal("-u", unit, "-o", "cat", "--since", "-10min")
            if f"PROBE {nonce} " in text:
                return _parse(text, nonce)
            time.sleep(0.5)
        status = self.sandbox.systemctl("status", "--lines=20", unit, check=False).stdout
        raise AssertionError(f"{unit} did not run the probe: {why}\n{status}")


def _parse(text: str, nonce: str) -> dict[str, str]:
    for line in text.splitlines():
        if line.startswith(f"PROBE {nonce} "):
            return json.loads(line.split(" ", 2)[2])
    raise AssertionError(f"no probe line in:\n{text[-2000:]}")


@pytest.fixture(scope="module")
def box() -> Iterator[Box]:
    sandbox = Sandbox()
    sandbox.boot()
    standins = HostStandins(sandbox)
    try:
        result = Box(sandbox)
        standins.start("tests.standins.dns", "--listen", "127.0.0.1:53", "--record",
                       str(result.record), "--answer", f"*.attacker.example={ATTACKER_ADDRESS}",
                       "--answer", f"{LOCAL_NAME}=127.0.0.1")
        start_resolved(sandbox, upstream="127.0.0.1")
        sandbox.install(config_text(local_hosts=False))
        yield result
    finally:
        standins.stop()
        sandbox.stop()


def test_the_control_resolves_by_every_path_through_the_real_resolved(box: Box) -> None:
    """Without the units' confinement each path works: the test can fail."""
    nonce, outcomes = box.control()
    assert {path: outcomes[path] for path in PATHS} == {
        path: f"ok {ATTACKER_ADDRESS}" for path in PATHS}, outcomes
    assert box.asked(nonce) == sorted(f"{path}-{nonce}.t1-prompt.attacker.example"
                                      for path in PATHS)


@pytest.mark.parametrize("unit", sorted(CONFINED))
def test_a_confined_unit_resolves_no_name_by_any_path(box: Box, unit: str) -> None:
    nonce, outcomes = box.probe(unit)
    worked = {path: outcomes[path] for path in PATHS if not outcomes[path].startswith("failed")}
    assert worked == {}, f"{unit} resolved through {sorted(worked)}: {outcomes}"
    assert box.asked(nonce) == [], f"{unit}'s queries reached a resolver"


def test_local_hosts_lets_the_router_resolve_through_the_box_nameserver_only(
        box: Box) -> None:
    """[router] local_hosts: the router (and the bench, which connects to backends by URL)
    resolve through the stub; varlink, D-Bus and every other DNS server stay closed, and the
    other confined units still resolve nothing."""
    box.sandbox.install(config_text(local_hosts=True))
    try:
        for unit in ("mushishi-router.service", "mushishi-bench.service"):
            nonce, outcomes = box.probe(unit, LOCAL_NAME)
            assert outcomes[f"name {LOCAL_NAME}"] == "ok 127.0.0.1", (unit, outcomes)
            for path in ("loopback-udp", "loopback-tcp", "varlink", "dbus"):
                assert outcomes[path].startswith("failed"), (unit, path, outcomes)
            asked = box.asked(nonce)
            assert all(name.split("-", 1)[0] in ("getaddrinfo", "stub") for name in asked), (
                unit, asked)
        for unit in ("mushishi-cpu-floor.service", "mushishi-tenant@probe.service"):
            nonce, outcomes = box.probe(unit, LOCAL_NAME)
            assert outcomes[f"name {LOCAL_NAME}"].startswith("failed"), (unit, outcomes)
            assert box.asked(nonce) == [], unit
    finally:
        box.sandbox.install(config_text(local_hosts=False))
