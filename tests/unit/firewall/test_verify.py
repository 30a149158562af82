"""The `verify` report: the interpreter's verdicts for every service and interface, compared
with the config."""

from __future__ import annotations

from mushishi.firewall.host import Socket
from mushishi.firewall.nft_interpreter import parse_ruleset
from mushishi.firewall.table import Service, Table
from mushishi.firewall.verify import build_report, format_report
from tests.unit.firewall.nft_json import ACCEPT, IIFNAME, TCP_DPORT, m, ruleset

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


def test_missing_forward_chain_leaves_published_ports_open_and_says_so() -> None:
    data = ruleset({"input": [[m({"meta": {"key": "iif"}}, "lo"), ACCEPT],
                              [m(IIFNAME, "tailscale0"), m(TCP_DPORT, {"set": [22, 4000]}),
                               ACCEPT]]})
    live, others = parse_ruleset(data)
    report = build_report(TABLE, live, others, ["lo", "tailscale0", "eth0", "docker0"], [])
    assert report.problems[0].startswith("table inet mushishi has no forward base chain")
    assert "router from eth0 into a container: the config says drop" in "\n".join(
        report.problems)
