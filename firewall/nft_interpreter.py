"""An interpreter of nftables' JSON (`nft -j list ruleset`) for table inet mushishi.

It runs the first packet of a new connection through a base chain, rule by rule, and says
accept, drop or unknown, with the rule that decided. It understands the expressions the
renderer writes and the usual hand-written ones; anything else is "unknown" (never
guessed). The other tables' input and forward base chains are listed, not evaluated.
`verify` builds its report on it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Literal

from mushishi.firewall.table import TABLE_FAMILY, TABLE_NAME

Verdict = Literal["accept", "drop", "unknown"]
Family = Literal["ip", "ip6"]
FAMILIES: tuple[Family, ...] = ("ip", "ip6")


class Unknown(Exception):
    """An expression the interpreter does not understand."""


@dataclass(frozen=True, slots=True)
class Packet:
    """The first packet of a new connection, as the hooks see it (after DNAT)."""

    family: Family
    iifname: str
    l4proto: str
    dport: int
    oifname: str = ""
    dnat: bool = False
    original_dport: int = 0
    saddr: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    """A chain's verdict and the rule that gave it."""

    verdict: Verdict
    why: str


@dataclass
class Chain:
    """A chain of the live table: hook, policy and rules (each a list of JSON exprs)."""

    name: str
    hook: str | None = None
    policy: str = "accept"
    rules: list[tuple[int, str, list[dict[str, Any]]]] = field(default_factory=list)


@dataclass
class LiveTable:
    """table inet mushishi as the kernel has it."""

    sets: dict[str, list[Any]]
    chains: dict[str, Chain]
    counters: dict[str, int]

    def base_chain(self, hook: str) -> Chain | None:
        """The chain attached to `hook`, if any."""
        return next((c for c in self.chains.values() if c.hook == hook), None)


@dataclass(frozen=True, slots=True)
class OtherChain:
    """A base chain of another table on the input or forward hook."""

    family: str
    table: str
    name: str
    hook: str
    policy: str


def parse_ruleset(data: dict[str, Any]) -> tuple[LiveTable | None, list[OtherChain]]:
    """Our table (None if not loaded) and the other tables' input/forward base chains."""
    sets: dict[str, list[Any]] = {}
    chains: dict[str, Chain] = {}
    counters: dict[str, int] = {}
    others: list[OtherChain] = []
    found = False
    for item in data.get("nftables", []):
        kind, body = next(iter(item.items()))
        if kind == "metainfo":
            continue
        ours = body.get("family") == TABLE_FAMILY and body.get("table", body.get("name")) \
            == TABLE_NAME
        if kind == "table" and ours:
            found = True
        elif kind == "set" and ours:
            sets[body["name"]] = [_element_value(e) for e in body.get("elem", [])]
        elif kind == "chain":
            if ours:
                chains[body["name"]] = Chain(body["name"], body.get("hook"),
                                             body.get("policy", "accept"))
            elif body.get("hook") in ("input", "forward"):
                others.append(OtherChain(body["family"], body["table"], body["name"],
                                         body["hook"], body.get("policy", "accept")))
        elif kind == "rule" and ours:
            chain = chains.setdefault(body["chain"], Chain(body["chain"]))
            chain.rules.append((body.get("handle", 0), body.get("comment", ""), body["expr"]))
            for expr in body["expr"]:
                if "counter" in expr and body.get("comment"):
                    counters[body["comment"]] = int(expr["counter"].get("packets", 0))
    return (LiveTable(sets, chains, counters) if found else None), others


def _element_value(element: Any) -> Any:
    if isinstance(element, dict) and "elem" in element:
        return element["elem"]["val"]
    return element


_L4_NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1, "ipv6-icmp": 58}


def _l4_matches(name: Any, packet: Packet) -> bool:
    if isinstance(name, int):
        return _L4_NUMBERS.get(packet.l4proto) == name
    return name == packet.l4proto


def _field(left: dict[str, Any], packet: Packet) -> Any:
    """The packet's value for the left side of a match; raises Unknown if not modelled."""
    if "meta" in left:
        key = left["meta"]["key"]
        values = {"iif": packet.iifname, "iifname": packet.iifname,
                  "oif": packet.oifname, "oifname": packet.oifname,
                  "l4proto": packet.l4proto,
                  "nfproto": "ipv4" if packet.family == "ip" else "ipv6"}
        if key in values:
            return values[key]
    elif "ct" in left:
        key, direction = left["ct"]["key"], left["ct"].get("dir")
        if key == "state" and direction is None:
            return {"new"}
        if key == "status" and direction is None:
            return {"dnat"} if packet.dnat else set()
        if key == "proto-dst" and direction == "original":
            return packet.original_dport or packet.dport
    elif "payload" in left:
        protocol, name = left["payload"].get("protocol"), left["payload"].get("field")
        if protocol in ("tcp", "udp", "th") and name == "dport":
            if protocol != "th" and protocol != packet.l4proto:
                return _NO_MATCH
            return packet.dport
        if protocol in ("icmp", "icmpv6"):
            return _NO_MATCH  # our probes are TCP and UDP
        if protocol in ("ip", "ip6"):
            if protocol != packet.family:
                return _NO_MATCH
            if name == "saddr":
                return ipaddress.ip_address(packet.saddr)
            if name == "hoplimit" or name == "ttl":
                return 64
    raise Unknown(f"cannot evaluate {left}")


class _NoMatch:
    """The expression's protocol is not the packet's: the match fails."""


_NO_MATCH = _NoMatch()


def _value_in(value: Any, right: Any, table: LiveTable) -> bool:
    if isinstance(right, str) and right.startswith("@"):
        if right[1:] not in table.sets:
            raise Unknown(f"set {right} is not in the table")
        return any(_equals(value, member) for member in table.sets[right[1:]])
    if isinstance(right, dict) and "set" in right:
        return any(_equals(value, member) for member in right["set"])
    if isinstance(right, list):
        return any(_equals(value, member) for member in right)
    return _equals(value, right)


def _equals(value: Any, member: Any) -> bool:
    if isinstance(value, set):
        return (member in value) if isinstance(member, str) else False
    if isinstance(member, dict):
        if "range" in member:
            low, high = member["range"]
            return low <= value <= high
        if "prefix" in member:
            network = ipaddress.ip_network(
                f"{member['prefix']['addr']}/{member['prefix']['len']}", strict=False)
            return isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address) \
                and value.version == network.version and value in network
        raise Unknown(f"cannot compare with {member}")
    if isinstance(value, str) and isinstance(member, str) and member.endswith("*"):
        return value.startswith(member[:-1])
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        try:
            return value == ipaddress.ip_address(member)
        except ValueError:
            return False
    return value == member


def _match(expr: dict[str, Any], packet: Packet, table: LiveTable) -> bool:
    left, op, right = expr["left"], expr["op"], expr["right"]
    if "meta" in left and left["meta"]["key"] == "l4proto":
        hit = _l4_matches(right, packet) if not isinstance(right, dict | list) else any(
            _l4_matches(m, packet) for m in (right["set"] if isinstance(right, dict)
                                             else right))
        return hit if op in ("==", "in") else not hit
    value = _field(left, packet)
    if value is _NO_MATCH:
        return False
    if isinstance(value, set):
        wanted = right if isinstance(right, list) else [right]
        hit = bool(value & set(wanted)) if op == "in" else any(v in value for v in wanted)
        return hit if op in ("==", "in") else not hit
    hit = _value_in(value, right, table)
    if op in ("==", "in"):
        return hit
    if op == "!=":
        return not hit
    raise Unknown(f"operator {op!r}")


_QUIET = {"counter", "log", "comment"}


def evaluate(table: LiveTable, chain_name: str, packet: Packet) -> Decision:
    """Run `packet` through a base chain of the live table: accept, drop or unknown."""
    chain = table.chains.get(chain_name)
    if chain is None:
        return Decision("unknown", f"chain {chain_name} not found")
    decision = _walk(table, chain_name, packet, 0)
    if decision is not None:
        return decision
    return Decision("drop" if chain.policy == "drop" else "accept", f"policy {chain.policy}")


def _walk(table: LiveTable, chain_name: str, packet: Packet, depth: int) -> Decision | None:
    """A chain's verdict, or None when the packet falls off its end (or hits `return`)."""
    chain = table.chains.get(chain_name)
    if chain is None or depth > 16:
        return Decision("unknown", f"chain {chain_name} not found or jumps too deep")
    for handle, comment, exprs in chain.rules:
        label = f"rule {handle}" + (f" ({comment})" if comment else "")
        try:
            outcome = _run_rule(table, exprs, packet, depth)
        except Unknown as error:
            return Decision("unknown", f"{label}: {error}")
        if outcome == "return":
            return None
        if isinstance(outcome, Decision):
            return outcome
        if outcome is not None:
            return Decision(outcome, label)
    return None


def _run_rule(table: LiveTable, exprs: list[dict[str, Any]], packet: Packet,
              depth: int) -> Verdict | Decision | Literal["return"] | None:
    """A rule's verdict, a decision reached in a chain it jumped to, or None (next rule)."""
    limited = False
    for expr in exprs:
        kind = next(iter(expr))
        if kind == "match":
            if not _match(expr["match"], packet, table):
                return None
        elif kind in ("accept", "drop", "reject"):
            if limited:
                raise Unknown("a rate limit decides")
            return "accept" if kind == "accept" else "drop"
        elif kind in ("jump", "goto"):
            inner = _walk(table, expr[kind]["target"], packet, depth + 1)
            if inner is not None:
                return inner
            if kind == "goto":
                if depth:
                    raise Unknown("goto falls off a chain inside a jump")
                return "return"
        elif kind == "return":
            return "return"
        elif kind == "limit":
            limited = True
        elif kind not in _QUIET:
            raise Unknown(f"statement {kind!r}")
    return None
