"""`verify`: evaluate the LIVE table inet mushishi for each service and interface.

The live ruleset (`nft -j list ruleset`) is run through `nft_interpreter` for a new
connection to each service from each interface of the box, IPv4 and IPv6, on the input
hook (services on the host) and the forward hook (Docker-published ports), and the result
is compared with what the config says. An expression the interpreter does not understand
makes the verdict "unknown" (reported, never guessed). Only this table is evaluated: a
drop here is final, but an accept here can still be dropped by another table, so those
are listed too.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from mushishi.firewall.host import Socket, listening
from mushishi.firewall.nft_interpreter import (
    FAMILIES,
    Decision,
    Family,
    LiveTable,
    OtherChain,
    Packet,
    evaluate,
)
from mushishi.firewall.table import (
    Service,
    Table,
    forward_allowed,
    input_allowed,
    source_of,
)

# Representative addresses: the interpreter must know a packet's source for `saddr` rules.
_SOURCE_ADDRESS = {"ip": "192.0.2.10", "ip6": "2001:db8::10"}
_LOOPBACK_ADDRESS = {"ip": "127.0.0.1", "ip6": "::1"}


@dataclass(frozen=True, slots=True)
class Cell:
    """One service from one interface: what the live rules do and what the config wants."""

    service: str
    hook: str
    interface: str
    live: dict[str, Decision]  # by family
    expected: bool

    @property
    def ok(self) -> bool:
        """Both families give the expected verdict."""
        wanted = "accept" if self.expected else "drop"
        return all(d.verdict == wanted for d in self.live.values())

    def shown(self) -> str:
        """`yes`, `-`, `v4 only`, `?`, ..."""
        verdicts = {f: d.verdict for f, d in self.live.items()}
        if len(set(verdicts.values())) == 1:
            verdict = next(iter(verdicts.values()))
            text = {"accept": "yes", "drop": "-", "unknown": "?"}[verdict]
        else:
            text = "/".join(f"{'v4' if f == 'ip' else 'v6'}:"
                            f"{ {'accept': 'yes', 'drop': 'no', 'unknown': '?'}[v]}"
                            for f, v in verdicts.items())
        return text if self.ok else text + "!"


@dataclass
class Report:
    """Everything verify prints."""

    loaded: bool
    interfaces: list[str]
    bridges: list[str]
    cells: list[Cell]
    listeners: dict[str, list[str]]
    unlisted: list[str]
    others: list[OtherChain]
    counters: dict[str, int]
    problems: list[str]
    notes: list[str]

    @property
    def ok(self) -> bool:
        """True when the live rules do exactly what the config says."""
        return self.loaded and not self.problems


def _packet(service: Service, family: Family, interface: str, *, forward_to: str = ""
            ) -> Packet:
    address = _LOOPBACK_ADDRESS[family] if interface == "lo" else _SOURCE_ADDRESS[family]
    if forward_to:
        # After Docker's DNAT the destination port may differ; the original one is ours.
        return Packet(family, interface, service.proto, 1, oifname=forward_to, dnat=True,
                      original_dport=service.port, saddr=address)
    return Packet(family, interface, service.proto, service.port, saddr=address)


def probe_interfaces(table: Table, present: Iterable[str]) -> tuple[list[str], list[str]]:
    """(interfaces to evaluate as sources, bridges to evaluate as forward targets)."""
    present = list(present)
    sources = sorted(set(present) | {"lo", table.tailnet_interface},
                     key=lambda n: (n != "lo", n != table.tailnet_interface, n))
    bridges = [n for n in present if source_of(n, table) == "containers"]
    if not bridges and table.docker_bridges:
        first = table.docker_bridges[0]
        bridges = [first[:-1] + "0" if first.endswith("+") else first]
    return sources, bridges


def build_report(table: Table, live: LiveTable | None, others: list[OtherChain],
                 present_interfaces: list[str], all_sockets: list[Socket]) -> Report:
    """Evaluate every service from every interface and compare with the config (pure)."""
    sources, bridges = probe_interfaces(table, present_interfaces)
    cells: list[Cell] = []
    problems: list[str] = []
    notes: list[str] = []
    if live is not None:
        input_chain = live.base_chain("input")
        forward_chain = live.base_chain("forward")
        if input_chain is None:
            problems.append("table inet mushishi has no input base chain")
        if forward_chain is None and table.docker_bridges:
            problems.append("table inet mushishi has no forward base chain: Docker-published "
                            "ports are not guarded")
        for service in table.services:
            for interface in sources:
                source = source_of(interface, table)
                if input_chain is not None:
                    decisions = {f: evaluate(live, input_chain.name, _packet(service, f,
                                                                             interface))
                                 for f in FAMILIES}
                    cells.append(Cell(service.name, "input", interface, decisions,
                                      input_allowed(service, source)))
                if interface == "lo" or not bridges:
                    continue
                for bridge in bridges:
                    if interface == bridge:
                        continue
                    if forward_chain is None:
                        decisions = {f: Decision("accept", "no forward chain") for f in FAMILIES}
                    else:
                        decisions = {f: evaluate(live, forward_chain.name,
                                                 _packet(service, f, interface,
                                                         forward_to=bridge))
                                     for f in FAMILIES}
                    cells.append(Cell(service.name, f"forward:{bridge}", interface, decisions,
                                      forward_allowed(service, source)))
        for cell in cells:
            if not cell.ok:
                wanted = "accept" if cell.expected else "drop"
                found = ", ".join(f"{'IPv4' if f == 'ip' else 'IPv6'}: {d.verdict} by {d.why}"
                                  for f, d in cell.live.items())
                where = "into a container" if cell.hook.startswith("forward") else "to the host"
                problems.append(f"{cell.service} from {cell.interface} {where}: the config "
                                f"says {wanted}; live rules: {found}")
    else:
        problems.append("table inet mushishi is not loaded: nothing of [firewall] is enforced "
                        "(run `mushishi firewall apply`)")
    listeners: dict[str, list[str]] = {}
    listed = {(s.proto, s.port) for s in table.services}
    unlisted: set[str] = set()
    for sock in listening(all_sockets):
        listeners.setdefault(f"{sock.proto}/{sock.local_port}", []).append(sock.local_address)
        loopback = ipaddress.ip_address(sock.local_address).is_loopback
        if (sock.proto, sock.local_port) not in listed and not loopback:
            unlisted.add(f"{sock.proto}/{sock.local_port} on {sock.local_address}")
    for other in others:
        notes.append(f"table {other.family} {other.table} also filters the {other.hook} hook "
                     f"(chain {other.name}, policy {other.policy}): it can drop what this "
                     "table accepts, never accept what it drops")
    return Report(live is not None, sources, bridges, cells,
                  {k: sorted(set(v)) for k, v in listeners.items()}, sorted(unlisted), others,
                  live.counters if live else {}, problems, notes)


def format_report(report: Report, table: Table) -> str:
    """The human-readable matrix."""
    lines: list[str] = []
    by_key = {(c.service, c.hook, c.interface): c for c in report.cells}
    width = max((len(s.name) for s in table.services), default=7) + 2
    if report.loaded:
        lines.append("New connections accepted by the live table inet mushishi "
                     "(yes / - ; '!' = differs from the config):")
        lines.append("")
        header = f"{'service':<{width}}{'port':<11}" + "".join(
            f"{i:<12}" for i in report.interfaces) + "listening on"
        lines.append(header)
        for service in table.services:
            row = f"{service.name:<{width}}{service.key:<11}"
            for interface in report.interfaces:
                cell = by_key.get((service.name, "input", interface))
                row += f"{cell.shown() if cell else '':<12}"
            row += ", ".join(report.listeners.get(service.key, [])) or "(nothing)"
            lines.append(row)
        for bridge in report.bridges:
            lines += ["", f"Forwarded to a container on {bridge}, if a container publishes "
                      "the port (Docker DNAT):", ""]
            forward_sources = [i for i in report.interfaces if i not in ("lo", bridge)]
            lines.append(f"{'service':<{width}}{'port':<11}"
                         + "".join(f"{i:<12}" for i in forward_sources))
            for service in table.services:
                row = f"{service.name:<{width}}{service.key:<11}"
                for interface in forward_sources:
                    cell = by_key.get((service.name, f"forward:{bridge}", interface))
                    row += f"{cell.shown() if cell else '':<12}"
                lines.append(row)
        if report.counters:
            lines += ["", "Dropped since loaded: " + ", ".join(
                f"{name.removeprefix('dropped: ')} {count} packets"
                for name, count in sorted(report.counters.items()))]
    if report.unlisted:
        lines += ["", "Listening beyond loopback but not in the table (reachable from "
                  "loopback only):"]
        lines += [f"  {entry}" for entry in report.unlisted]
    if report.notes:
        lines += ["", "Notes:"] + [f"  {note}" for note in report.notes]
    if report.problems:
        lines += ["", "PROBLEMS:"] + [f"  {problem}" for problem in report.problems]
    else:
        lines += ["", "OK: the live rules do what [firewall] says, for IPv4 and IPv6."]
    return "\n".join(lines)
