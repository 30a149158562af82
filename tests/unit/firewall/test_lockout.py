"""The SSH lock-out guard decides from facts (table-driven)."""

from __future__ import annotations

import pytest

from mushishi.firewall.lockout import Facts, Session, check_lockout
from mushishi.firewall.table import Service, Table


def table(ssh_exposure: str, ssh_port: int = 22) -> Table:
    return Table("tailscale0", ("docker0",), (
        Service("ssh", ssh_port, "tcp", ssh_exposure),  # type: ignore[arg-type]
        Service("router", 4000, "tcp", "tailnet"),
    ), "tailnet", True)


def session(interface: str | None, port: int = 22) -> Session:
    return Session("10.1.2.3", port, interface, "$SSH_CONNECTION")


@pytest.mark.parametrize(("exposure", "sessions", "tailnet_up", "listening", "blocked"), [
    ("tailnet", (), True, True, False),
    ("tailnet", (session("tailscale0"),), True, True, False),
    ("tailnet", (session("lo"),), True, True, False),
    ("tailnet", (session("eth0"),), True, True, True),        # LAN session, tailnet-only SSH
    ("tailnet", (session("docker0"),), True, True, True),
    ("lan", (session("eth0"),), True, True, False),
    ("tailnet", (), False, True, True),                        # tailnet down
    ("lan", (), False, True, False),
    ("tailnet", (), True, False, True),                        # nothing on tcp/22
    ("local", (), False, False, False),                        # console-only box
    ("local", (session("eth0"),), True, True, True),
    ("lan", (session("eth0", port=2222),), True, True, True),  # sshd on a port not listed
])
def test_lockout_verdicts(exposure: str, sessions: tuple[Session, ...], tailnet_up: bool,
                          listening: bool, blocked: bool) -> None:
    verdict = check_lockout(table(exposure), Facts(sessions, tailnet_up, listening))
    assert bool(verdict.problems) is blocked, verdict


def test_problem_names_the_interface_and_the_fix() -> None:
    verdict = check_lockout(table("tailnet"), Facts((session("eth0"),), True, True))
    (problem,) = verdict.problems
    assert "from 10.1.2.3 comes in over eth0 (lan)" in problem
    assert "SSH is exposed to 'tailnet' only" in problem
    assert '[firewall.ssh].exposure = "lan"' in problem


def test_session_on_unknown_interface_is_a_warning_not_a_refusal() -> None:
    verdict = check_lockout(table("tailnet"), Facts((session(None),), True, True))
    assert verdict.problems == ()
    assert "cannot tell which interface" in verdict.warnings[0]


def test_session_to_another_listed_port_counts_that_service() -> None:
    verdict = check_lockout(table("lan"), Facts((session("tailscale0", port=4000),), True,
                                                True))
    assert verdict.problems == ()
