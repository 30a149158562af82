"""[firewall] config: the seed table validates, every mistake names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mushishi.shared.config import ConfigError, load_config
from tests.paths import EXAMPLE_CONFIG


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "mushishi.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return [str(issue) for issue in caught.value.issues]


def service(name: str, port: int, exposure: str = "tailnet", proto: str = "tcp") -> str:
    return (f'[[firewall.services]]\nname = "{name}"\nport = {port}\nproto = "{proto}"\n'
            f'exposure = "{exposure}"\n')


def test_example_config_carries_the_seed_box_table() -> None:
    firewall = load_config(EXAMPLE_CONFIG).settings.firewall
    ports = {(s.port, s.proto): s.exposure for s in firewall.services}
    assert ports == {
        (4000, "tcp"): "tailnet",
        (8642, "tcp"): "tailnet", (9119, "tcp"): "tailnet", (6006, "tcp"): "tailnet",
        (19999, "tcp"): "tailnet", (2026, "tcp"): "tailnet", (8188, "tcp"): "tailnet",
        (9010, "tcp"): "tailnet", (41641, "udp"): "lan",
    }
    assert (firewall.ssh.port, firewall.ssh.exposure) == (22, "tailnet")
    assert firewall.tailnet_interface == "tailscale0"
    assert firewall.docker_bridges == ["docker0", "br-+"]


def test_duplicate_port_and_name_are_errors_naming_both_entries(tmp_path: Path) -> None:
    text = service("a", 8000) + service("a", 8001) + service("b", 8000)
    assert problems(tmp_path, text) == [
        "firewall.services[1].name: duplicate service name 'a' (also firewall.services[0])",
        "firewall.services[2].port: tcp 8000 is already listed by firewall.services[0] (a)",
    ]


def test_same_port_over_tcp_and_udp_is_two_services(tmp_path: Path) -> None:
    path = tmp_path / "mushishi.toml"
    path.write_text(service("dns", 53) + service("dns-udp", 53, proto="udp"))
    assert len(load_config(path).settings.firewall.services) == 2


def test_ssh_port_in_services_points_to_the_ssh_table(tmp_path: Path) -> None:
    text = "[firewall.ssh]\nport = 2222\n" + service("ssh", 2222)
    assert problems(tmp_path, text) == [
        "firewall.services[0].port: tcp 2222 is SSH: configure it in [firewall.ssh] "
        "(port, exposure), not in services"
    ]


@pytest.mark.parametrize(("text", "path"), [
    ('[firewall]\ntailnet_interface = "tail scale"\n', "firewall.tailnet_interface"),
    ('[firewall]\ntailnet_interface = "a-very-long-interface"\n', "firewall.tailnet_interface"),
    ('[firewall]\ndocker_bridges = ["br-+x"]\n', "firewall.docker_bridges"),
    ('[firewall]\ndocker_bridges = ["tailscale0"]\n', "firewall.docker_bridges"),
    (service("bad name", 1), "firewall.services[0].name"),
    (service("x", 70000), "firewall.services[0].port"),
    (service("x", 1, exposure="world"), "firewall.services[0].exposure"),
    ('[firewall.ssh]\nexposure = "internet"\n', "firewall.ssh.exposure"),
    ('[firewall]\nconfirm_timeout_s = 1\n', "firewall.confirm_timeout_s"),
    ('[firewall]\nnft = "nft"\n', "firewall.nft"),
    ('[firewall]\nexposure = "lan"\n', "firewall.exposure"),
])
def test_bad_firewall_values_are_errors_at_their_key(tmp_path: Path, text: str,
                                                      path: str) -> None:
    found = problems(tmp_path, text)
    assert len(found) == 1 and found[0].startswith(f"{path}:"), found
