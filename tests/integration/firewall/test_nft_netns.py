"""nftables rules applied for real in network namespaces, probed from real neighbours.

Every reachability claim is checked both ways over IPv4 and IPv6: before the rules, every
client reaches every listener (so an unreachable port afterwards is the rules' doing).
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mushishi.firewall.apply import guard_alive
from mushishi.firewall.render_nft import render_nft
from mushishi.firewall.table import build_table
from mushishi.shared.config import load_settings
from tests.integration.firewall.conftest import (
    EXTRA_SERVICES,
    MUSHISHI,
    PUBLISHED,
    UNLISTED_HOST_PORT,
    Box,
    clean_env,
    seed_services,
    write_config,
)
from tests.integration.firewall.netns import Side, Topology

APPLY_TEXT = str(Path(__file__).with_name("apply_text.py"))
SERVICES = seed_services() + EXTRA_SERVICES
HOST_SERVICES = [s for s in SERVICES if s["port"] not in PUBLISHED]
PUBLISHED_SERVICES = [s for s in SERVICES if s["port"] in PUBLISHED]
SSH = {"name": "ssh", "port": 22, "exposure": "tailnet"}


def targets(side: Side, services: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """probe target -> (service name, family), for both of the box's addresses on `side`."""
    found = {}
    for service in services:
        proto = service.get("proto", "tcp")
        found[f"{proto}:{side.box_v4}:{service['port']}"] = (service["name"], "ipv4")
        found[f"{proto}:[{side.box_v6}]:{service['port']}"] = (service["name"], "ipv6")
    return found


def reached(topology: Topology, side: Side, services: list[dict[str, Any]]
            ) -> dict[tuple[str, str], bool]:
    """(service, family) -> did the client on `side` get an answer?"""
    wanted = targets(side, services)
    answers = topology.probe(side.namespace, list(wanted))
    return {wanted[target]: ok for target, ok in answers.items()}


def names(result: dict[tuple[str, str], bool], family: str) -> set[str]:
    return {name for (name, fam), ok in result.items() if ok and fam == family}


ALL_HOST = [SSH, *HOST_SERVICES, {"name": "unlisted", "port": UNLISTED_HOST_PORT}]


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def apply_and_confirm(box: Box, config: Path | None = None) -> None:
    applied = box.mushishi("apply", "--no-wait", config=config)
    assert applied.returncode == 0, applied.stderr
    confirmed = box.mushishi("confirm", config=config)
    assert confirmed.returncode == 0, confirmed.stderr


def test_apply_tailnet_reaches_exactly_tailnet_services_lan_only_lan_ones(box: Box) -> None:
    topology = box.topology
    for side in (topology.tailnet, topology.lan):
        before = reached(topology, side, ALL_HOST)
        assert all(before.values()), f"listeners unreachable before any rule: {before}"

    apply_and_confirm(box)

    tailnet = reached(topology, topology.tailnet, ALL_HOST)
    lan = reached(topology, topology.lan, ALL_HOST)
    want_tailnet = {s["name"] for s in [SSH, *HOST_SERVICES] if s["exposure"] != "local"}
    want_lan = {s["name"] for s in HOST_SERVICES if s["exposure"] == "lan"}
    assert want_lan == {"tailscale-wireguard"}
    for family in ("ipv4", "ipv6"):
        assert names(tailnet, family) == want_tailnet, family
        assert names(lan, family) == want_lan, family
    # The box itself still reaches everything over loopback, "local" services included.
    local = topology.probe(topology.box, [f"tcp:127.0.0.1:{p}" for p in (5432, 4000, 9999)]
                           + [f"tcp:[::1]:{p}" for p in (5432, 4000, 9999)])
    assert all(local.values()), local


def test_published_container_port_reachable_from_tailnet_not_from_lan(box: Box) -> None:
    topology = box.topology
    published = [*PUBLISHED_SERVICES, {"name": "unlisted-published", "port": 7000}]
    for side in (topology.tailnet, topology.lan):
        assert all(reached(topology, side, published).values()), "Docker stand-in broken"

    apply_and_confirm(box)

    tailnet = reached(topology, topology.tailnet, published)
    lan = reached(topology, topology.lan, published)
    for family in ("ipv4", "ipv6"):
        assert names(tailnet, family) == {"comfyui", "lan-web"}, family
        assert names(lan, family) == {"lan-web"}, family
    # Containers reach host services only where the table says so.
    from_container = topology.probe(topology.container, [
        "tcp:172.17.0.1:9091", "tcp:[fd00:17::1]:9091",      # from_containers
        "udp:172.17.0.1:41641",                              # lan: every interface
        "tcp:172.17.0.1:4000", "tcp:[fd00:17::1]:4000",      # tailnet only
        "tcp:172.17.0.1:5432",                               # local only
    ])
    assert from_container == {
        "tcp:172.17.0.1:9091": True, "tcp:[fd00:17::1]:9091": True,
        "udp:172.17.0.1:41641": True,
        "tcp:172.17.0.1:4000": False, "tcp:[fd00:17::1]:4000": False,
        "tcp:172.17.0.1:5432": False,
    }


def test_apply_without_confirmation_rolls_back_to_the_previous_rules(box: Box) -> None:
    topology = box.topology
    lan_research = [{"name": "research-ui", "port": 2026}]
    services_a = [dict(s, exposure="lan") if s["name"] == "research-ui" else s
                  for s in SERVICES]
    config_a = write_config(box.tmp_path / "a.toml", box.state_dir, services=services_a)
    apply_and_confirm(box, config_a)
    listing_a = box.live_table()
    assert all(reached(topology, topology.lan, lan_research).values())

    applied = box.mushishi("apply", "--no-wait", "--timeout", "4")
    assert applied.returncode == 0, applied.stderr
    pending = box.pending()
    assert pending is not None and guard_alive(pending["guard_pid"], pending["token"])
    assert "mushishi_firewall_pending_confirmation 1.0" in box.metrics()
    assert not any(reached(topology, topology.lan, lan_research).values())

    wait_for(lambda: box.last()["action"] == "rolled-back", 60, "the guard's rollback")
    assert box.last()["detail"] == "not confirmed before the deadline"
    assert box.live_table() == listing_a
    assert all(reached(topology, topology.lan, lan_research).values())
    assert box.pending() is None
    metrics = box.metrics()  # written by the guard itself
    assert "mushishi_firewall_pending_confirmation 0.0" in metrics
    assert 'mushishi_firewall_last_change_action{action="rolled-back"} 1.0' in metrics
    wait_for(lambda: not guard_alive(pending["guard_pid"], pending["token"]), 10,
             "the guard to exit")


def test_first_apply_rolls_back_to_no_table_and_confirmed_one_outlives_its_deadline(
        box: Box) -> None:
    topology = box.topology
    assert box.mushishi("apply", "--no-wait", "--timeout", "3").returncode == 0
    wait_for(lambda: box.last()["action"] == "rolled-back", 60, "the rollback")
    assert box.live_table() is None

    assert box.mushishi("apply", "--no-wait", "--timeout", "3").returncode == 0
    pending = box.pending()
    assert box.mushishi("confirm").returncode == 0
    wait_for(lambda: not guard_alive(pending["guard_pid"], pending["token"]), 10,
             "confirm to end the guard")
    time.sleep(3.5)  # past the deadline: a real-time property of the live box
    assert box.last()["action"] == "confirmed"
    assert box.live_table() is not None
    assert (box.state_dir / "confirmed.nft").read_text() == \
        (box.state_dir / "applied.nft").read_text()
    late = box.mushishi("confirm")
    assert late.returncode == 1 and "nothing to confirm" in late.stderr
    assert not any(reached(topology, topology.lan, [{"name": "router", "port": 4000}]).values())


def test_ruleset_rejected_by_nft_check_is_never_applied(box: Box) -> None:
    topology = box.topology
    apply_and_confirm(box)
    before = box.live_table()
    settings = load_settings(box.config).firewall
    broken = render_nft(build_table(settings)).replace("@lan_tcp accept comment",
                                                       "@lan_tcpx accept comment", 1)
    assert broken != render_nft(build_table(settings))
    result = topology.run(topology.box, [sys.executable, APPLY_TEXT, str(box.state_dir),
                                         settings.nft], input=broken, check=False)
    assert result.returncode == 1
    assert "nft -c rejected the ruleset; nothing was changed" in result.stderr
    assert "lan_tcpx" in result.stderr  # nft's own explanation reaches the operator
    assert box.live_table() == before
    assert box.pending() is None
    assert box.last()["action"] == "rejected"
    assert (box.state_dir / "applied.nft").read_text() == (
        box.state_dir / "confirmed.nft").read_text()


def test_interactive_apply_rolls_back_on_no_and_keeps_on_yes(box: Box) -> None:
    def apply_at_a_terminal(answer: str) -> tuple[int, str]:
        controller, terminal = pty.openpty()
        process = subprocess.Popen(
            ["ip", "netns", "exec", box.topology.box, MUSHISHI, "firewall", "apply",
             "--timeout", "60", "--config", str(box.config)],
            stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=clean_env())
        os.close(terminal)
        assert process.stdout is not None
        output = ""
        deadline = time.monotonic() + 60
        while "type 'yes'" not in output and time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 1)
            if ready:
                output += os.read(process.stdout.fileno(), 4096).decode()
        os.write(controller, f"{answer}\n".encode())
        rest, _ = process.communicate(timeout=60)
        os.close(controller)
        return process.returncode, output + rest

    code, output = apply_at_a_terminal("no")
    assert code == 1 and "the previous rules are back" in output, output
    assert box.live_table() is None
    assert box.last()["detail"] == "not confirmed at the prompt"

    code, output = apply_at_a_terminal("yes")
    assert code == 0 and "confirmed" in output, output
    assert box.live_table() is not None and box.last()["action"] == "confirmed"


def test_ssh_lockout_guard_refuses_rules_that_would_cut_off_a_session(box: Box) -> None:
    topology = box.topology
    # An SSH session from the LAN (an established connection to tcp/22) and rules that
    # allow SSH from the tailnet only: refused, nothing loaded.
    session = topology.start(topology.lan.namespace, [
        sys.executable, "-c",
        "import socket, time; v4 = socket.create_connection(('192.168.50.1', 22)); "
        "v6 = socket.create_connection(('fd00:50::1', 22)); "
        "print('connected', flush=True); time.sleep(120)"], stdout=subprocess.PIPE)
    assert session.stdout is not None and session.stdout.readline().strip() == "connected"
    refused = box.mushishi("apply", "--no-wait")
    session.terminate()
    session.wait()
    assert refused.returncode == 1
    assert "from 192.168.50.2 comes in over lan0 (lan)" in refused.stderr
    assert "from fd00:50::2 comes in over lan0 (lan)" in refused.stderr
    assert "[firewall.ssh].exposure" in refused.stderr
    assert box.live_table() is None

    # $SSH_CONNECTION of a LAN client (as sshd sets it) is refused the same way...
    lan_session = clean_env(SSH_CONNECTION="192.168.50.2 50022 192.168.50.1 22")
    refused = box.mushishi("apply", "--no-wait", env=lan_session)
    assert refused.returncode == 1 and "lan0" in refused.stderr
    # ...and accepted once SSH is open to the LAN, or when the session is on the tailnet.
    lan_ssh = write_config(box.tmp_path / "lan-ssh.toml", box.state_dir, ssh_exposure="lan")
    accepted = box.mushishi("apply", "--no-wait", env=lan_session, config=lan_ssh)
    assert accepted.returncode == 0, accepted.stderr
    assert box.mushishi("rollback", config=lan_ssh).returncode == 0
    tailnet_session = clean_env(SSH_CONNECTION="100.64.0.2 50022 100.64.0.1 22")
    accepted = box.mushishi("apply", "--no-wait", env=tailnet_session)
    assert accepted.returncode == 0, accepted.stderr
    assert box.mushishi("rollback").returncode == 0

    # Tailnet-only SSH while the tailnet is down: refused unless overridden.
    topology.run(topology.box, ["ip", "link", "set", "tailscale0", "down"])
    try:
        refused = box.mushishi("apply", "--no-wait")
        assert refused.returncode == 1 and "tailscale0 is not up" in refused.stderr
        forced = box.mushishi("apply", "--no-wait", "--allow-ssh-lockout")
        assert forced.returncode == 0, forced.stderr
        assert box.mushishi("rollback").returncode == 0
    finally:
        topology.run(topology.box, ["ip", "link", "set", "tailscale0", "up"])
        topology.run(topology.box, ["ip", "addr", "replace", "fd7a:115c:a1e0::1/64", "dev",
                                    "tailscale0", "nodad"])


def _verify(box: Box) -> tuple[int, dict[str, Any]]:
    result = box.mushishi("verify", "--json")
    return result.returncode, json.loads(result.stdout)


def _cell(report: dict[str, Any], service: str, hook: str, interface: str) -> dict[str, Any]:
    return next(c for c in report["cells"]
                if (c["service"], c["hook"], c["interface"]) == (service, hook, interface))


def test_verify_agrees_with_what_clients_actually_reach(box: Box) -> None:
    topology = box.topology
    code, report = _verify(box)
    assert code == 1 and not report["loaded"]

    apply_and_confirm(box)
    code, report = _verify(box)
    assert code == 0, report["problems"]
    for side, interface in ((topology.tailnet, "tailscale0"), (topology.lan, "lan0")):
        host = reached(topology, side, [SSH, *HOST_SERVICES])
        for (name, family), ok in host.items():
            live = _cell(report, name, "input", interface)["live"]
            assert (live["ip" if family == "ipv4" else "ip6"] == "accept") == ok, \
                (name, family, interface)
        forwarded = reached(topology, side, PUBLISHED_SERVICES)
        for (name, family), ok in forwarded.items():
            live = _cell(report, name, "forward:docker0", interface)["live"]
            assert (live["ip" if family == "ipv4" else "ip6"] == "accept") == ok, \
                (name, family, interface)

    # A hand-edited live rule: verify names it, and the LAN client really gets through.
    topology.nft("add", "rule", "inet", "mushishi", "input", "tcp", "dport", "5432", "accept")
    code, report = _verify(box)
    assert code == 1
    assert any(p.startswith("postgres from lan0 to the host: the config says drop")
               for p in report["problems"]), report["problems"]
    assert all(reached(topology, topology.lan, [{"name": "postgres", "port": 5432}]).values())
    text = box.mushishi("verify")
    assert text.returncode == 1 and "PROBLEMS:" in text.stdout and "yes!" in text.stdout


def test_tailscaled_accept_all_cannot_reopen_what_the_table_drops(box: Box) -> None:
    topology = box.topology
    apply_and_confirm(box)
    # What tailscaled's netfilter mode "on" inserts at the top of INPUT (iptables-nft).
    topology.run(topology.box, ["iptables", "-I", "INPUT", "-i", "tailscale0", "-j", "ACCEPT"])
    topology.run(topology.box, ["ip6tables", "-I", "INPUT", "-i", "tailscale0", "-j",
                                "ACCEPT"])
    try:
        closed = reached(topology, topology.tailnet,
                         [{"name": "postgres", "port": 5432},
                          {"name": "unlisted", "port": UNLISTED_HOST_PORT}])
        assert not any(closed.values()), closed
        code, report = _verify(box)
        assert code == 0
        assert any("table ip filter also filters the input hook" in n for n in report["notes"])
    finally:
        topology.run(topology.box, ["iptables", "-F", "INPUT"])
        topology.run(topology.box, ["ip6tables", "-F", "INPUT"])


def test_restore_loads_the_confirmed_rules_after_a_reboot(box: Box) -> None:
    nothing = box.mushishi("restore")
    assert nothing.returncode == 1 and "no confirmed ruleset" in nothing.stderr
    apply_and_confirm(box)
    confirmed = box.live_table()
    box.topology.nft("flush", "ruleset")  # what a reboot leaves
    box.topology.publish(PUBLISHED)
    restored = box.mushishi("restore")
    assert restored.returncode == 0, restored.stderr
    assert box.live_table() == confirmed
    assert box.last()["action"] == "restored"


def test_a_killed_guard_is_reported_and_the_change_can_still_be_undone(box: Box) -> None:
    assert box.mushishi("apply", "--no-wait", "--timeout", "2").returncode == 0
    pending = box.pending()
    assert pending is not None
    os.kill(pending["guard_pid"], 9)
    wait_for(lambda: not guard_alive(pending["guard_pid"], pending["token"]), 10, "the kill")
    time.sleep(2.5)  # past the deadline nobody enforced
    assert box.live_table() is not None
    code, report = _verify(box)
    assert code == 1 and any("its guard is gone" in p for p in report["problems"])
    again = box.mushishi("apply", "--no-wait")
    assert again.returncode == 1 and "run `mushishi firewall rollback`" in again.stderr
    assert box.mushishi("rollback").returncode == 0
    assert box.live_table() is None and box.last()["action"] == "rolled-back"
