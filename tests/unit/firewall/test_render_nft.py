"""The nftables rendering: one table, every exposure in its set, both hooks, both families."""

from __future__ import annotations

import re

from mushishi.firewall.render_nft import render_nft, restore_text
from mushishi.firewall.table import Service, Table

SERVICES = (
    Service("ssh", 22, "tcp", "tailnet"),
    Service("router", 4000, "tcp", "tailnet", description='says "hi"\n'),
    Service("db", 5432, "tcp", "local"),
    Service("wg", 41641, "udp", "lan"),
    Service("rtp", 5004, "udp", "tailnet", from_containers=True),
    Service("web", 8080, "tcp", "lan", from_containers=True),
)


def table(**changes: object) -> Table:
    fields = {"tailnet_interface": "tailscale0", "docker_bridges": ("docker0", "br-+"),
              "services": SERVICES, "icmp_echo": "tailnet", "log_drops": True}
    fields.update(changes)
    return Table(**fields)  # type: ignore[arg-type]


def elements(text: str, set_name: str) -> list[int]:
    block = re.search(rf"set {set_name} {{(.*?)\n\t}}", text, re.S)
    assert block, set_name
    found = re.search(r"elements = \{ (.*) \}", block.group(1))
    return [int(e.split()[0]) for e in found.group(1).split(", ")] if found else []


def test_each_exposure_lands_in_its_own_set() -> None:
    text = render_nft(table())
    assert elements(text, "tailnet_tcp") == [22, 4000]
    assert elements(text, "tailnet_udp") == [5004]
    assert elements(text, "lan_tcp") == [8080]
    assert elements(text, "lan_udp") == [41641]
    assert elements(text, "containers_tcp") == []  # web is lan: every interface already
    assert elements(text, "containers_udp") == [5004]
    assert "5432" not in text  # local: loopback is accepted whole, nothing else


def test_input_is_default_drop_keyed_on_interfaces_not_addresses() -> None:
    text = render_nft(table())
    assert "type filter hook input priority filter; policy drop;" in text
    assert 'iif "lo" accept' in text
    assert 'iifname "tailscale0" tcp dport @tailnet_tcp accept' in text
    assert "tcp dport @lan_tcp accept" in text
    assert 'iifname { "docker0", "br-*" } udp dport @containers_udp accept' in text
    assert "192.168." not in text and "10.0.0.0" not in text and "100.64" not in text


def test_ipv6_essentials_are_kept_open() -> None:
    text = render_nft(table())
    assert "table inet mushishi {" in text  # one table for IPv4 and IPv6
    assert "nd-neighbor-solicit" in text and "ip6 hoplimit 255" in text
    assert "packet-too-big" in text
    assert "ip6 saddr fe80::/10 udp dport 546 accept" in text


def test_forward_hook_guards_only_traffic_into_docker_bridges() -> None:
    text = render_nft(table())
    forward = text[text.index("chain forward"):]
    assert "type filter hook forward priority filter - 1; policy accept;" in forward
    assert 'oifname != { "docker0", "br-*" } accept' in forward
    assert ('iifname "tailscale0" ct status dnat meta l4proto tcp ct original proto-dst '
            "@tailnet_tcp accept") in forward
    assert "ct status dnat meta l4proto udp ct original proto-dst @lan_udp accept" in forward
    assert forward.rstrip().endswith('drop comment "anything else into a container"\n\t}\n}')


def test_no_bridges_means_no_forward_chain() -> None:
    text = render_nft(table(docker_bridges=()))
    assert "chain forward" not in text and "containers may call" not in text


def test_icmp_echo_follows_its_exposure() -> None:
    assert 'iifname "tailscale0" icmp type echo-request accept' in render_nft(table())
    lan = render_nft(table(icmp_echo="lan"))
    assert "\t\ticmp type echo-request accept" in lan
    assert "echo-request" not in render_nft(table(icmp_echo="local"))


def test_drop_logging_is_optional_and_counters_always_present() -> None:
    assert "log prefix" in render_nft(table())
    quiet = render_nft(table(log_drops=False))
    assert "log prefix" not in quiet
    assert 'counter comment "dropped: input"' in quiet


def test_replacement_is_one_atomic_transaction_header() -> None:
    text = render_nft(table(), source="/etc/mushishi/mushishi.toml")
    body = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert body[:3] == ["table inet mushishi", "delete table inet mushishi",
                        "table inet mushishi {"]
    assert "/etc/mushishi/mushishi.toml" in text


def test_comments_cannot_break_out_of_their_quotes() -> None:
    text = render_nft(table())
    assert "4000 comment \"router: says 'hi''\"" in text


def test_restore_text_recreates_or_removes_the_table() -> None:
    assert restore_text(None) == "table inet mushishi\ndelete table inet mushishi\n"
    listing = "table inet mushishi {\n\tchain input {\n\t}\n}\n"
    assert restore_text(listing) == ("table inet mushishi\ndelete table inet mushishi\n"
                                     + listing)
