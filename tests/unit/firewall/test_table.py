"""The table: who may reach a service, on the host and as a published container port."""

from __future__ import annotations

import pytest

from mushishi.firewall.table import (
    Service,
    Table,
    build_table,
    expected_matrix,
    forward_allowed,
    input_allowed,
    nft_interface,
    source_of,
)
from mushishi.shared.config import load_settings
from tests.paths import EXAMPLE_CONFIG

TABLE = Table("tailscale0", ("docker0", "br-+"), (), "tailnet", True)


@pytest.mark.parametrize(("exposure", "from_containers", "allowed"), [
    ("local", False, {"loopback"}),
    ("tailnet", False, {"loopback", "tailnet"}),
    ("lan", False, {"loopback", "tailnet", "lan", "containers"}),
    ("local", True, {"loopback", "containers"}),
    ("tailnet", True, {"loopback", "tailnet", "containers"}),
])
def test_input_allowed_follows_exposure(exposure: str, from_containers: bool,
                                        allowed: set[str]) -> None:
    service = Service("s", 1, "tcp", exposure, from_containers)  # type: ignore[arg-type]
    got = {source for source in ("loopback", "tailnet", "lan", "containers")
           if input_allowed(service, source)}  # type: ignore[arg-type]
    assert got == allowed


@pytest.mark.parametrize(("exposure", "allowed"), [
    ("local", {"containers"}),
    ("tailnet", {"tailnet", "containers"}),
    ("lan", {"tailnet", "lan", "containers"}),
])
def test_forward_allowed_never_from_loopback_and_always_between_containers(
        exposure: str, allowed: set[str]) -> None:
    service = Service("s", 1, "tcp", exposure)  # type: ignore[arg-type]
    got = {source for source in ("loopback", "tailnet", "lan", "containers")
           if forward_allowed(service, source)}  # type: ignore[arg-type]
    assert got == allowed


@pytest.mark.parametrize(("interface", "source"), [
    ("lo", "loopback"), ("tailscale0", "tailnet"), ("docker0", "containers"),
    ("br-1a2b3c", "containers"), ("br", "lan"), ("eth0", "lan"), ("docker1", "lan"),
    ("wlan0", "lan"),
])
def test_source_of_classifies_interfaces(interface: str, source: str) -> None:
    assert source_of(interface, TABLE) == source


def test_nft_interface_turns_iptables_wildcard_into_nft_wildcard() -> None:
    assert nft_interface("br-+") == "br-*"
    assert nft_interface("docker0") == "docker0"


def test_build_table_puts_ssh_first_from_its_own_section() -> None:
    table = build_table(load_settings(EXAMPLE_CONFIG).firewall)
    assert table.services[0] == Service("ssh", 22, "tcp", "tailnet",
                                        description="OpenSSH ([firewall.ssh])")
    assert table.ports("tailnet", "tcp") == [22, 2026, 4000, 6006, 8188, 8642, 9010, 9119,
                                            19999]
    assert table.ports("lan", "udp") == [41641]
    assert table.service("comfyui").port == 8188


def test_expected_matrix_covers_every_service_source_and_hook() -> None:
    table = build_table(load_settings(EXAMPLE_CONFIG).firewall)
    matrix = expected_matrix(table)
    assert len(matrix) == len(table.services) * (4 + 3)
    assert matrix[("comfyui", "forward", "tailnet")] is True
    assert matrix[("comfyui", "forward", "lan")] is False
    assert matrix[("tailscale-wireguard", "input", "lan")] is True
