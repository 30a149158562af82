"""The nftables JSON interpreter, on `nft -j` shaped rulesets (table-driven)."""

from __future__ import annotations

from typing import Any

import pytest

from mushishi.firewall.nft_interpreter import Packet, evaluate, parse_ruleset
from tests.unit.firewall.nft_json import ACCEPT, DROP, IIFNAME, OIFNAME, TCP_DPORT, m, ruleset


def verdict(data: dict[str, Any], packet: Packet, chain: str = "input") -> str:
    live, _ = parse_ruleset(data)
    assert live is not None
    return evaluate(live, chain, packet).verdict


def tcp(port: int, iif: str = "eth0", family: str = "ip", **kw: Any) -> Packet:
    return Packet(family, iif, "tcp", port, **kw)  # type: ignore[arg-type]


SEED = ruleset({"input": [
    [m({"meta": {"key": "iif"}}, "lo"), ACCEPT],
    [m({"ct": {"key": "state"}}, ["established", "related"], "in"), ACCEPT],
    [m({"ct": {"key": "state"}}, "invalid", "in"), DROP],
    [m(IIFNAME, "tailscale0"), m(TCP_DPORT, "@tailnet_tcp"), ACCEPT],
    [m(TCP_DPORT, "@lan_tcp"), ACCEPT],
    [{"limit": {"rate": 5, "per": "minute"}}, {"log": {"prefix": "x"}}],
    [{"counter": {"packets": 7, "bytes": 420}}],
]}, sets={"tailnet_tcp": [22, {"elem": {"val": 4000, "comment": "router"}}],
          "lan_tcp": [{"range": [8080, 8089]}]})


@pytest.mark.parametrize(("packet", "expected"), [
    (tcp(4000, "lo"), "accept"),
    (tcp(4000, "tailscale0"), "accept"),
    (tcp(22, "tailscale0", "ip6"), "accept"),
    (tcp(4000, "eth0"), "drop"),
    (tcp(5432, "tailscale0"), "drop"),
    (tcp(8085, "eth0"), "accept"),                 # a range element
    (Packet("ip", "tailscale0", "udp", 4000), "drop"),  # tcp dport never matches udp
])
def test_seed_shaped_input_chain(packet: Packet, expected: str) -> None:
    assert verdict(SEED, packet) == expected


def test_wildcard_interface_sets_and_not_equal() -> None:
    data = ruleset({"forward": [
        [m(OIFNAME, {"set": ["br-*", "docker0"]}, "!="), ACCEPT],
        [m({"ct": {"key": "status"}}, "dnat", "in"), m({"meta": {"key": "l4proto"}}, "tcp"),
         m({"ct": {"key": "proto-dst", "dir": "original"}}, {"set": [8188]}), ACCEPT],
        [DROP],
    ]}, hooks={"forward": ("forward", "accept")})
    to_bridge = dict(oifname="br-5f3a", dnat=True)
    assert verdict(data, tcp(80, original_dport=8188, **to_bridge), "forward") == "accept"
    assert verdict(data, tcp(80, original_dport=7000, **to_bridge), "forward") == "drop"
    assert verdict(data, tcp(80, oifname="eth1"), "forward") == "accept"
    assert verdict(data, tcp(80, oifname="docker0", original_dport=8188), "forward") == "drop"


def test_jump_return_and_accept_inside_a_jumped_chain() -> None:
    data = ruleset({"input": [
        [m(IIFNAME, "tailscale0"), {"jump": {"target": "tailnet"}}],
        [m(TCP_DPORT, 4000), DROP],
        [ACCEPT],
    ], "tailnet": [
        [m(TCP_DPORT, 22), ACCEPT],
        [m(TCP_DPORT, 4000), {"return": None}],
    ]})
    assert verdict(data, tcp(22, "tailscale0")) == "accept"
    assert verdict(data, tcp(4000, "tailscale0")) == "drop"   # returned, then dropped
    assert verdict(data, tcp(9000, "tailscale0")) == "accept"  # fell through, then accepted


def test_addresses_prefixes_and_protocol_numbers() -> None:
    data = ruleset({"input": [
        [m({"payload": {"protocol": "ip6", "field": "saddr"}},
           {"prefix": {"addr": "2001:db8::", "len": 32}}), ACCEPT],
        [m({"meta": {"key": "l4proto"}}, 6), m(TCP_DPORT, 4000), ACCEPT],
    ]})
    assert verdict(data, tcp(1, family="ip6", saddr="2001:db8::10")) == "accept"
    assert verdict(data, tcp(1, family="ip6", saddr="2001:db9::10")) == "drop"
    assert verdict(data, tcp(1, family="ip", saddr="192.0.2.1")) == "drop"
    assert verdict(data, tcp(4000, saddr="192.0.2.1")) == "accept"


@pytest.mark.parametrize("rule", [
    [m({"fib": {"flags": ["daddr"], "result": "type"}}, "local"), ACCEPT],
    [{"limit": {"rate": 1, "per": "second"}}, ACCEPT],
    [{"queue": {"num": 1}}],
    [m(TCP_DPORT, "@missing"), ACCEPT],
])
def test_what_it_cannot_model_is_unknown_never_guessed(rule: list[dict[str, Any]]) -> None:
    data = ruleset({"input": [rule, [ACCEPT]]})
    assert verdict(data, tcp(4000)) == "unknown"


def test_counters_are_read_from_commented_rules() -> None:
    data = ruleset({"input": [[{"counter": {"packets": 12, "bytes": 900}}]]})
    data["nftables"][-1]["rule"]["comment"] = "dropped: input"
    live, _ = parse_ruleset(data)
    assert live is not None and live.counters == {"dropped: input": 12}
