"""The UFW rendering, run by Debian's real ufw in a private network and mount namespace.

/etc/ufw and /etc/default/ufw are bind-mounted copies inside the namespace, so neither
the host's files nor its firewall change (checked at the end of each test).
"""

from __future__ import annotations

import hashlib
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mushishi.firewall.render_ufw import (
    BEGIN_MARKER,
    docker_user_block,
    merge_block,
    render_ufw,
    ufw_commands,
)
from mushishi.firewall.table import build_table
from mushishi.shared.config import load_settings
from tests.integration.firewall.conftest import seed_services, write_config
from tests.integration.firewall.netns import Topology

HOST_FILES = [Path("/etc/ufw/after.rules"), Path("/etc/ufw/after6.rules"),
              Path("/etc/ufw/user.rules"), Path("/etc/ufw/user6.rules"),
              Path("/etc/ufw/ufw.conf"), Path("/etc/default/ufw")]


def _digest(paths: list[Path]) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.exists()}


class UfwSandbox:
    """Copies of UFW's configuration, used by ufw inside `unshare --net --mount`."""

    def __init__(self, root: Path) -> None:
        self.etc = root / "ufw"
        shutil.copytree("/etc/ufw", self.etc, symlinks=True)
        self.defaults = root / "default-ufw"
        text = Path("/etc/default/ufw").read_text()
        # ufw applies /etc/ufw/sysctl.conf when it starts; keep every sysctl as it is.
        self.defaults.write_text("\n".join(
            "IPT_SYSCTL=/dev/null" if line.startswith("IPT_SYSCTL=") else line
            for line in text.splitlines()) + "\n")
        self.original_after = (self.etc / "after.rules").read_text()
        self.original_after6 = (self.etc / "after6.rules").read_text()

    def run(self, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        mounts = (f"mount --bind {shlex.quote(str(self.etc))} /etc/ufw && "
                  f"mount --bind {shlex.quote(str(self.defaults))} /etc/default/ufw && ")
        result = subprocess.run(["unshare", "--net", "--mount", "--propagation", "private",
                                 "sh", "-ec", mounts + script],
                                capture_output=True, text=True, timeout=300, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    def snapshot(self) -> dict[str, str]:
        return {name: (self.etc / name).read_text()
                for name in ("after.rules", "after6.rules", "user.rules", "user6.rules")}


@pytest.fixture
def ufw(tmp_path: Path) -> Iterator[UfwSandbox]:
    before = _digest(HOST_FILES)
    yield UfwSandbox(tmp_path)
    assert _digest(HOST_FILES) == before, "a test changed the host's UFW files"


def _render(tmp_path: Path, name: str, **kwargs: object) -> tuple[str, object]:
    config = write_config(tmp_path / f"{name}.toml", tmp_path / "state", **kwargs)  # type: ignore[arg-type]
    settings = load_settings(config).firewall
    script = render_ufw(build_table(settings), ufw=settings.ufw,
                        after_rules=settings.ufw_after_rules,
                        after6_rules=settings.ufw_after6_rules)
    return script, settings


def test_every_rendered_ufw_command_is_accepted_by_ufw_dry_run(ufw: UfwSandbox,
                                                              tmp_path: Path) -> None:
    _, settings = _render(tmp_path, "dry")
    commands = ufw_commands(build_table(settings))  # type: ignore[arg-type]
    # 3 defaults, SSH, one rule per seed service; of the extras: none for the two local
    # services, one each for audio-rtp and lan-web, three for metrics-push (tailnet and
    # both Docker bridges).
    assert len(commands) == 3 + 1 + len(seed_services()) + 5
    lines = [f"echo '>>> {' '.join(argv)}'; /usr/sbin/ufw --dry-run {shlex.join(argv)}"
             for argv in commands]
    result = ufw.run("\n".join(lines))
    assert "ERROR" not in result.stdout + result.stderr
    for argv in commands:
        assert f">>> {' '.join(argv)}" in result.stdout


def test_ufw_script_is_idempotent_and_loads_the_docker_user_block(ufw: UfwSandbox,
                                                                 tmp_path: Path) -> None:
    script, settings = _render(tmp_path, "seed")
    table = build_table(settings)  # type: ignore[arg-type]
    path = tmp_path / "rules.sh"
    path.write_text(script)
    first = ufw.run(f"sh {path}")
    assert "UFW is inactive" in first.stdout
    once = ufw.snapshot()
    ufw.run(f"sh {path}")
    assert ufw.snapshot() == once, "a second run changed UFW's files"
    assert once["after.rules"] == merge_block(ufw.original_after,
                                              docker_user_block(table, "ipv4"))
    assert once["after6.rules"] == merge_block(ufw.original_after6,
                                               docker_user_block(table, "ipv6"))
    assert once["after.rules"].count(BEGIN_MARKER) == 1

    live = ufw.run(f"/usr/sbin/ufw --force enable >/dev/null && sh {path} && "
                   "iptables -S DOCKER-USER && iptables -S mushishi-docker && "
                   "ip6tables -S mushishi-docker && /usr/sbin/ufw status")
    out = live.stdout
    assert "-A DOCKER-USER -o docker0 -j mushishi-docker" in out
    assert ("-A mushishi-docker -i tailscale0 -p tcp -m conntrack --ctstate DNAT "
            "--ctorigdstport 8188 -j RETURN") in out
    assert ("-A mushishi-docker -p tcp -m conntrack --ctstate DNAT --ctorigdstport 8080 "
            "-j RETURN") in out
    assert "--ctorigdstport 5432" not in out  # local: never forwarded
    assert out.count("-A mushishi-docker -j DROP") == 2  # IPv4 and IPv6
    assert "4000/tcp on tailscale0" in out and "ALLOW" in out


def test_ufw_script_removes_rules_the_table_no_longer_lists(ufw: UfwSandbox,
                                                          tmp_path: Path) -> None:
    first, _ = _render(tmp_path, "first")
    services = [dict(s, exposure="lan") if s["name"] == "research-ui" else s
                for s in seed_services() if s["name"] != "netdata"]
    second, _ = _render(tmp_path, "second", services=services)
    (tmp_path / "first.sh").write_text(first)
    (tmp_path / "second.sh").write_text(second)
    shown = ufw.run(f"sh {tmp_path / 'first.sh'} >/dev/null && "
                    f"sh {tmp_path / 'second.sh'} >/dev/null && /usr/sbin/ufw show added").stdout
    assert "mushishi:netdata:" not in shown
    assert "mushishi:research-ui:tcp/2026:tailscale0" not in shown
    assert "ufw allow 2026/tcp comment 'mushishi:research-ui:tcp/2026:any'" in shown
    assert "mushishi:router:tcp/4000:tailscale0" in shown


def test_damaged_block_in_after_rules_stops_the_script(ufw: UfwSandbox,
                                                     tmp_path: Path) -> None:
    script, _ = _render(tmp_path, "seed")
    (tmp_path / "rules.sh").write_text(script)
    (ufw.etc / "after.rules").write_text(ufw.original_after + BEGIN_MARKER + "\n")
    before = ufw.snapshot()
    result = ufw.run(f"sh {tmp_path / 'rules.sh'}", check=False)
    assert result.returncode == 1
    assert "unbalanced mushishi markers" in result.stderr
    assert ufw.snapshot() == before, "the script changed something before refusing"


# What Docker's iptables integration adds to FORWARD (moby's DOCKER-USER jump first, then
# its own accepts for published ports), emulated for the container at 172.17.0.2.
DOCKER_FORWARD = """
for t in iptables ip6tables; do
    $t -N DOCKER-USER 2>/dev/null || true
    $t -I FORWARD 1 -j DOCKER-USER
    $t -I FORWARD 2 -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
    $t -I FORWARD 3 -o docker0 -p tcp --dport 80 -j ACCEPT
    $t -I FORWARD 4 -i docker0 -j ACCEPT
done
"""
RESET = """
for t in iptables ip6tables; do
    for table in filter nat mangle raw; do $t -t $table -F; $t -t $table -X; done
    for chain in INPUT FORWARD OUTPUT; do $t -P $chain ACCEPT; done
done
"""


def test_ufw_rules_and_docker_user_block_hold_against_real_neighbours(
        ufw: UfwSandbox, topology: Topology, tmp_path: Path) -> None:
    script, _ = _render(tmp_path, "seed")
    (tmp_path / "rules.sh").write_text(script)
    mounts = (f"mount --bind {shlex.quote(str(ufw.etc))} /etc/ufw && "
              f"mount --bind {shlex.quote(str(ufw.defaults))} /etc/default/ufw && ")
    def in_box(commands: str) -> None:
        topology.run(topology.box, ["unshare", "--mount", "--propagation", "private", "sh",
                                    "-ec", mounts + commands])

    try:
        # The seed deployment's bug: UFW on, Docker publishing, no DOCKER-USER rules.
        in_box("/usr/sbin/ufw --force enable >/dev/null\n" + DOCKER_FORWARD)
        bypass = topology.probe(topology.lan.namespace, [
            "tcp:192.168.50.1:8188", "tcp:[fd00:50::1]:8188", "tcp:192.168.50.1:4000"])
        assert bypass == {"tcp:192.168.50.1:8188": True, "tcp:[fd00:50::1]:8188": True,
                          "tcp:192.168.50.1:4000": False}, bypass

        in_box(f"sh {tmp_path / 'rules.sh'} >/dev/null")
        published = {8188: "comfyui", 8080: "lan-web", 5433: "local-container",
                     7000: "unlisted"}
        host = {4000: "router", 5432: "postgres", 22: "ssh"}
        for side, want_published, want_host in (
                (topology.tailnet, {"comfyui", "lan-web"}, {"router", "ssh"}),
                (topology.lan, {"lan-web"}, set())):
            wanted = {}
            for address in (side.box_v4, f"[{side.box_v6}]"):
                for port, name in {**published, **host}.items():
                    wanted[f"tcp:{address}:{port}"] = (name, address)
            answers = topology.probe(side.namespace, list(wanted))
            for address in (side.box_v4, f"[{side.box_v6}]"):
                got = {wanted[t][0] for t, ok in answers.items() if ok and wanted[t][1] == address}
                assert got == want_published | want_host, (side.namespace, address, answers)
        udp = topology.probe(topology.lan.namespace, ["udp:192.168.50.1:41641",
                                                     "udp:[fd00:50::1]:41641"])
        assert all(udp.values()), udp
    finally:
        topology.run(topology.box, ["sh", "-ec", RESET])
