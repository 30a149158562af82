"""The live-rule interpreter behind `verify`, on `nft -j` shaped rulesets (table-driven)."""

from __future__ import annotations

from typing import Any

import pytest

from mushishi.firewall.host import Socket
from mushishi.firewall.table import Service, Table
from mushishi.firewall.verify import (
    Packet,
    build_report,
    evaluate,
    format_report,
    parse_ruleset,
)


def m(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


IIFNAME = {"meta": {"key": "iifname"}}
OIFNAME = {"meta": {"key": "oifname"}}
TCP_DPORT = {"payload": {"protocol": "tcp", "field": "dport"}}
ACCEPT: dict[str, Any] = {"accept": None}
DROP: dict[str, Any] = {"drop": None}


def ruleset(chains: dict[str, list[list[dict[str, Any]]]], *, sets: dict[str, list[Any]] | None
            = None, hooks: dict[str, tuple[str, str]] | None = None,
            others: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    items: list[dict[str, Any]] = [{"metainfo": {"version": "1.0.6"}},
                                   {"table": {"family": "inet", "name": "mushishi"}}]
    for name, elements in (sets or {}).items():
        items.append({"set": {"family": "inet", "table": "mushishi", "name": name,
                              "type": "inet_service", "elem": elements}})
    hooks = hooks or {"input": ("input", "drop")}
    for name in chains:
        chain: dict[str, Any] = {"family": "inet", "table": "mushishi", "name": name}
        if name in hooks:
            chain |= {"type": "filter", "hook": hooks[name][0], "policy": hooks[name][1]}
        items.append({"chain": chain})
    handle = 1
    for name, rules in chains.items():
        for exprs in rules:
            items.append({"rule": {"family": "inet", "table": "mushishi", "chain": name,
                                   "handle": handle, "expr": exprs}})
            handle += 1
    return {"nftables": items + (others or [])}


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


TABLE = Table("tailscale0", ("docker0",), (
    Service("ssh", 22, "tcp", "tailnet"),
    Service("router", 4000, "tcp", "tailnet"),
), "tailnet", True)


def test_report_flags_each_cell_that_differs_from_the_config() -> None:
    data = ruleset({"input": [
        [m({"meta": {"key": "iif"}}, "lo"), ACCEPT],
        [m(IIFNAME, "tailscale0"), m(TCP_DPORT, {"set": [22]}), ACCEPT],
        [m(TCP_DPORT, 4000), ACCEPT],  # hand-added: router from everywhere
    ]})
    live, others = parse_ruleset(data)
    sockets = [Socket("tcp", "0.0.0.0", 4000, "0.0.0.0", 0, "0A"),
               Socket("tcp", "::", 5432, "::", 0, "0A"),
               Socket("tcp", "127.0.0.1", 6379, "0.0.0.0", 0, "0A")]
    no_bridges = Table("tailscale0", (), TABLE.services, "tailnet", True)
    report = build_report(no_bridges, live, others, ["lo", "tailscale0", "eth0"], sockets)
    assert not report.ok
    assert [p.split(":")[0] for p in report.problems] == ["router from eth0 to the host"]
    assert "IPv4: accept by rule 3" in report.problems[0]
    assert report.unlisted == ["tcp/5432 on ::"]  # loopback-only listeners are fine
    text = format_report(report, no_bridges)
    assert "PROBLEMS:" in text and "yes!" in text


def test_report_without_the_table_is_a_problem_and_lists_other_tables() -> None:
    data = {"nftables": [{"chain": {"family": "ip", "table": "filter", "name": "INPUT",
                                    "hook": "input", "policy": "accept"}}]}
    live, others = parse_ruleset(data)
    report = build_report(TABLE, live, others, ["lo", "eth0"], [])
    assert live is None and not report.ok
    assert "not loaded" in report.problems[0]
    assert "table ip filter also filters the input hook" in report.notes[0]


def test_counters_are_read_from_commented_rules() -> None:
    data = ruleset({"input": [[{"counter": {"packets": 12, "bytes": 900}}]]})
    data["nftables"][-1]["rule"]["comment"] = "dropped: input"
    live, _ = parse_ruleset(data)
    assert live is not None and live.counters == {"dropped: input": 12}


def test_missing_forward_chain_leaves_published_ports_open_and_says_so() -> None:
    data = ruleset({"input": [[m({"meta": {"key": "iif"}}, "lo"), ACCEPT],
                              [m(IIFNAME, "tailscale0"), m(TCP_DPORT, {"set": [22, 4000]}),
                               ACCEPT]]})
    live, others = parse_ruleset(data)
    report = build_report(TABLE, live, others, ["lo", "tailscale0", "eth0", "docker0"], [])
    assert report.problems[0].startswith("table inet mushishi has no forward base chain")
    assert "router from eth0 into a container: the config says drop" in "\n".join(
        report.problems)
