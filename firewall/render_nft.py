"""Render the table as one nftables ruleset in its own table (pure).

Why nftables first: a `drop` verdict in any base chain is final, whatever other tables
(tailscaled's `ts-input` accept-all, Docker's chains, UFW through iptables-nft) accept.
So this table alone decides what is closed, for IPv4 and IPv6 alike (`inet` family).

The text replaces the table atomically when loaded with `nft -f`: it first declares the
table (so the delete cannot fail), deletes it, then defines it, all in one transaction.
"""

from __future__ import annotations

from mushishi.firewall.table import TABLE_FAMILY, TABLE_NAME, Proto, Service, Table, nft_interface

TABLE = f"{TABLE_FAMILY} {TABLE_NAME}"
LOG_PREFIX = "mushishi-firewall drop"

# ICMPv6 that IPv6 cannot work without (RFC 4890): errors from anywhere, and neighbour
# discovery, which must come from the link itself (hop limit 255, RFC 4861).
ICMPV6_ERRORS = ("destination-unreachable", "packet-too-big", "time-exceeded",
                 "parameter-problem")
ICMPV6_NEIGHBOUR = ("nd-router-advert", "nd-neighbor-solicit", "nd-neighbor-advert",
                    "mld-listener-query")
# DHCPv6 replies come from a link-local server to the client port; conntrack cannot
# match them to the multicast request.
DHCPV6_CLIENT_PORT = 546


def set_name(group: str, proto: Proto) -> str:
    """`tailnet_tcp`, `lan_udp`, `containers_tcp`, ..."""
    return f"{group}_{proto}"


def _quote(text: str) -> str:
    cleaned = "".join(c if c.isprintable() and c not in '"\\' else "'" for c in text)
    return f'"{cleaned[:100]}"'


def _element(service: Service) -> str:
    label = service.name + (f": {service.description}" if service.description else "")
    return f"{service.port} comment {_quote(label)}"


def _set(name: str, comment: str, services: list[Service]) -> list[str]:
    lines = [f"\tset {name} {{", "\t\ttype inet_service", f"\t\tcomment {_quote(comment)}"]
    if services:
        ordered = sorted(services, key=lambda s: s.port)
        lines.append("\t\telements = { " + ", ".join(_element(s) for s in ordered) + " }")
    lines.append("\t}")
    return lines


def _interfaces(names: tuple[str, ...]) -> str:
    quoted = [f'"{nft_interface(n)}"' for n in names]
    return quoted[0] if len(quoted) == 1 else "{ " + ", ".join(quoted) + " }"


def _sets(table: Table) -> list[str]:
    lines: list[str] = []
    groups = (
        ("tailnet", "reachable from loopback and the tailnet",
         lambda s: s.exposure == "tailnet"),
        ("lan", "reachable from every interface", lambda s: s.exposure == "lan"),
        ("containers", "also reachable from the Docker bridges",
         lambda s: s.from_containers and s.exposure != "lan"),
    )
    for group, comment, wanted in groups:
        for proto in ("tcp", "udp"):
            members = [s for s in table.services if s.proto == proto and wanted(s)]
            lines += _set(set_name(group, proto), f"{proto} services {comment}", members)
            lines.append("")
    return lines


def _icmp_echo(table: Table) -> list[str]:
    if table.icmp_echo == "local":
        return []
    where = f'iifname "{table.tailnet_interface}" ' if table.icmp_echo == "tailnet" else ""
    return [f'\t\t{where}icmp type echo-request accept comment "ping ({table.icmp_echo})"',
            f'\t\t{where}icmpv6 type echo-request accept comment "ping ({table.icmp_echo})"']


def _input_chain(table: Table) -> list[str]:
    tailnet = f'"{table.tailnet_interface}"'
    lines = [
        "\tchain input {",
        "\t\ttype filter hook input priority filter; policy drop;",
        '\t\tiif "lo" accept comment "loopback: every service"',
        '\t\tct state established,related accept comment "replies and related ICMP errors"',
        "\t\ticmpv6 type { " + ", ".join(ICMPV6_ERRORS) + " } accept",
        "\t\ticmpv6 type { " + ", ".join(ICMPV6_NEIGHBOUR) + " } ip6 hoplimit 255 accept "
        'comment "IPv6 neighbour discovery, from the link only"',
        '\t\tct state invalid drop comment "no conntrack state"',
        f"\t\tip6 saddr fe80::/10 udp dport {DHCPV6_CLIENT_PORT} accept "
        'comment "DHCPv6 replies"',
        *_icmp_echo(table),
    ]
    for proto in ("tcp", "udp"):
        lines.append(f"\t\tiifname {tailnet} {proto} dport @{set_name('tailnet', proto)} "
                     'accept comment "tailnet services"')
    for proto in ("tcp", "udp"):
        lines.append(f"\t\t{proto} dport @{set_name('lan', proto)} accept "
                     'comment "lan services"')
    if table.docker_bridges:
        bridges = _interfaces(table.docker_bridges)
        for proto in ("tcp", "udp"):
            lines.append(f"\t\tiifname {bridges} {proto} dport "
                         f"@{set_name('containers', proto)} accept "
                         'comment "host services containers may call"')
    lines += _drop_tail(table, "input")
    lines.append("\t}")
    return lines


def _forward_chain(table: Table) -> list[str]:
    """The nftables counterpart of DOCKER-USER: only traffic into a Docker bridge."""
    bridges = _interfaces(table.docker_bridges)
    tailnet = f'"{table.tailnet_interface}"'
    lines = [
        "\tchain forward {",
        # Before Docker's and iptables-nft's chains; our drops are final, our accepts are not.
        "\t\ttype filter hook forward priority filter - 1; policy accept;",
        f'\t\toifname != {bridges} accept comment "not into a container: not ours to judge"',
        '\t\tct state established,related accept comment "replies"',
        '\t\tct state invalid drop comment "no conntrack state"',
        f'\t\tiifname {bridges} accept comment "container to container (Docker isolates '
        'networks itself)"',
    ]
    for proto in ("tcp", "udp"):
        lines.append(f"\t\tiifname {tailnet} ct status dnat meta l4proto {proto} ct original "
                     f"proto-dst @{set_name('tailnet', proto)} accept "
                     'comment "published ports: tailnet services"')
    for proto in ("tcp", "udp"):
        lines.append(f"\t\tct status dnat meta l4proto {proto} ct original proto-dst "
                     f"@{set_name('lan', proto)} accept "
                     'comment "published ports: lan services"')
    lines += _drop_tail(table, "forward")
    lines.append("\t\tdrop comment \"anything else into a container\"")
    lines.append("\t}")
    return lines


def _drop_tail(table: Table, chain: str) -> list[str]:
    lines = []
    if table.log_drops:
        lines.append(f'\t\tlimit rate 5/minute burst 10 packets log prefix "{LOG_PREFIX} '
                     f'{chain}: " level info')
    lines.append(f'\t\tcounter comment "dropped: {chain}"')
    return lines


def render_nft(table: Table, *, source: str = "") -> str:
    """The complete ruleset: `nft -f` replaces table inet mushishi with it atomically."""
    header = [
        "#!/usr/sbin/nft -f",
        f"# mushishi firewall: table {TABLE}, rendered from [firewall]"
        + (f" in {source}" if source else "") + ".",
        "# Apply with `mushishi firewall apply` (checked, atomic, rolled back unless confirmed);",
        "# edit the config, not this file. Other tables (Docker, tailscaled, UFW) are untouched.",
        "",
        f"table {TABLE}",
        f"delete table {TABLE}",
        "",
        f"table {TABLE} {{",
    ]
    body = _sets(table) + _input_chain(table)
    if table.docker_bridges:
        body += ["", *_forward_chain(table)]
    return "\n".join(header + body + ["}", ""])


def restore_text(previous_listing: str | None) -> str:
    """The ruleset that puts table inet mushishi back as listed, or removes it (None)."""
    lines = [f"table {TABLE}", f"delete table {TABLE}"]
    if previous_listing:
        lines.append(previous_listing.rstrip("\n"))
    return "\n".join(lines) + "\n"
