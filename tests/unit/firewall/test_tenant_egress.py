"""The Docker tenants' egress rules: nftables table and DOCKER-USER lines, from the config."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

import pytest

from mushishi.ctl import main
from mushishi.firewall.render_ufw import docker_user_block, render_ufw
from mushishi.firewall.table import Table
from mushishi.firewall.tenant_egress import TenantEgress, docker_user_lines, render_tenant_nft
from mushishi.shared.config import load_settings
from tests.paths import EXAMPLE_CONFIG

EGRESS = TenantEgress("br-mushishi", IPv4Network("172.30.240.0/24"),
                      (IPv4Network("127.0.0.0/8"), IPv6Network("::1/128"),
                       IPv4Network("100.64.0.0/10")))
TABLE = Table("tailscale0", ("docker0", "br-+"), (), "tailnet", False)


def test_the_table_refuses_everything_from_the_bridge_but_local_networks() -> None:
    text = render_tenant_nft(EGRESS, source="/etc/mushishi/mushishi.toml")
    assert text.splitlines()[4:6] == ["table inet mushishi_tenants",
                                      "delete table inet mushishi_tenants"]
    assert "elements = { 127.0.0.0/8, 100.64.0.0/10 }" in text
    assert "elements = { ::1/128 }" in text
    chain = [line.strip() for line in text.split("chain forward {")[1].splitlines()]
    assert chain[1:9] == [
        "type filter hook forward priority filter - 2; policy accept;",
        'iifname != "br-mushishi" accept comment "not from a Docker tenant: not ours to judge"',
        'oifname "br-mushishi" accept comment "between the tenants\' own containers"',
        'ct state established,related accept comment "replies to clients of a tenant"',
        "meta l4proto { tcp, udp } th dport 53 counter reject with icmpx type admin-prohibited"
        ' comment "no name resolution, not even by a local resolver"',
        'ip daddr @local_v4 accept comment "router.local_networks"',
        'ip6 daddr @local_v6 accept comment "router.local_networks"',
        'counter reject with icmpx type admin-prohibited comment "anything else: Docker '
        'tenants reach only router.local_networks"']


def test_a_family_without_local_networks_has_an_empty_set() -> None:
    text = render_tenant_nft(TenantEgress("br-mushishi", IPv4Network("172.30.240.0/24"),
                                          (IPv4Network("10.0.0.0/8"),)))
    v6 = text.split("set local_v6 {")[1].split("}")[0]
    assert "elements" not in v6


def test_docker_user_lines_per_family() -> None:
    chains, v4 = docker_user_lines(EGRESS, "ipv4")
    assert chains == [":mushishi-tenant-egress - [0:0]"]
    assert v4 == [
        "-A DOCKER-USER -i br-mushishi -j mushishi-tenant-egress",
        "-A mushishi-tenant-egress -o br-mushishi -j RETURN",
        "-A mushishi-tenant-egress -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        "-A mushishi-tenant-egress -p udp --dport 53 -j REJECT --reject-with "
        "icmp-admin-prohibited",
        "-A mushishi-tenant-egress -p tcp --dport 53 -j REJECT --reject-with "
        "icmp-admin-prohibited",
        "-A mushishi-tenant-egress -d 127.0.0.0/8 -j RETURN",
        "-A mushishi-tenant-egress -d 100.64.0.0/10 -j RETURN",
        "-A mushishi-tenant-egress -j REJECT --reject-with icmp-admin-prohibited"]
    _, v6 = docker_user_lines(EGRESS, "ipv6")
    assert "-A mushishi-tenant-egress -d ::1/128 -j RETURN" in v6
    assert v6[-1] == "-A mushishi-tenant-egress -j REJECT --reject-with icmp6-adm-prohibited"


def test_the_ufw_block_carries_them_first_only_when_asked() -> None:
    assert "mushishi-tenant-egress" not in docker_user_block(TABLE, "ipv4")
    block = docker_user_block(TABLE, "ipv4", EGRESS).splitlines()
    declared = block.index(":mushishi-tenant-egress - [0:0]")
    jump = block.index("-A DOCKER-USER -i br-mushishi -j mushishi-tenant-egress")
    assert declared < jump < block.index("-A DOCKER-USER -o docker0 -j mushishi-docker")
    script = render_ufw(TABLE, ufw="/usr/sbin/ufw", after_rules="/a", after6_rules="/b",
                        tenant_egress=EGRESS)
    assert script.count("-A DOCKER-USER -i br-mushishi -j mushishi-tenant-egress") == 2


def test_render_tenants_and_ufw_from_the_command_line(capsys: pytest.CaptureFixture[str],
                                                      tmp_path: Path) -> None:
    assert main(["firewall", "render", "--format", "tenants", "--config",
                 str(EXAMPLE_CONFIG)]) == 0
    assert render_tenant_nft(TenantEgress.from_settings(load_settings(EXAMPLE_CONFIG)),
                             source=str(EXAMPLE_CONFIG)) == capsys.readouterr().out
    assert main(["firewall", "render", "--format", "ufw", "--config",
                 str(EXAMPLE_CONFIG)]) == 0
    assert "-j mushishi-tenant-egress" in capsys.readouterr().out  # docker tenants there
    plain = tmp_path / "mushishi.toml"
    plain.write_text("[firewall]\n")
    assert main(["firewall", "render", "--format", "ufw", "--config", str(plain)]) == 0
    assert "mushishi-tenant-egress" not in capsys.readouterr().out
