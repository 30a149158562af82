"""Render the table for UFW: `ufw` commands and a DOCKER-USER block for after.rules (pure).

UFW is the compatibility backend. Two limits it cannot lift, stated in every rendering:
tailscaled's `ts-input` chain accepts everything on the tailnet interface ahead of UFW's
chains, so UFW's per-port tailnet rules only bite with `--netfilter-mode=off`; and
Docker-published ports never reach UFW's INPUT rules, which is what the DOCKER-USER block
is for. The block trusts interfaces, not RFC 1918 ranges (ufw-docker's default lets every
LAN host through).
"""

from __future__ import annotations

import shlex
from typing import Literal

from mushishi.firewall.table import Service, Table
from mushishi.firewall.tenant_egress import TenantEgress, docker_user_lines

BEGIN_MARKER = "# BEGIN mushishi DOCKER-USER (rendered by `mushishi firewall render --format ufw`)"
END_MARKER = "# END mushishi DOCKER-USER"
TAG_PREFIX = "mushishi:"
DOCKER_CHAIN = "mushishi-docker"

Family = Literal["ipv4", "ipv6"]


class BlockError(ValueError):
    """after.rules holds a damaged mushishi block (a marker without its partner)."""


def rule_tag(service: Service, interface: str) -> str:
    """The comment that marks a rule as ours: `mushishi:router:tcp/4000:tailscale0`."""
    return f"{TAG_PREFIX}{service.name}:{service.proto}/{service.port}:{interface}"


def ufw_rules(table: Table) -> list[tuple[str, list[str]]]:
    """(tag, ufw argv without the binary) for every allow rule, in ufw's own normal form."""
    rules: list[tuple[str, list[str]]] = []
    for service in table.services:
        if service.exposure == "lan":
            tag = rule_tag(service, "any")
            rules.append((tag, ["allow", f"{service.port}/{service.proto}", "comment", tag]))
            continue
        interfaces: list[str] = []
        if service.exposure == "tailnet":
            interfaces.append(table.tailnet_interface)
        if service.from_containers:
            interfaces += table.docker_bridges
        for interface in interfaces:
            tag = rule_tag(service, interface)
            rules.append((tag, ["allow", "in", "on", interface, "to", "any", "port",
                                str(service.port), "proto", service.proto, "comment", tag]))
    return rules


DEFAULT_COMMANDS: tuple[tuple[str, ...], ...] = (
    ("default", "deny", "incoming"),
    ("default", "allow", "outgoing"),
    ("default", "deny", "routed"),
)


def ufw_commands(table: Table) -> list[list[str]]:
    """Every `ufw` invocation the script runs to add rules (argv without the binary)."""
    return [list(c) for c in DEFAULT_COMMANDS] + [argv for _, argv in ufw_rules(table)]


def docker_user_block(table: Table, family: Family,
                      tenant_egress: TenantEgress | None = None) -> str:
    """The marker-delimited block for after.rules (ipv4) or after6.rules (ipv6); with
    `tenant_egress`, traffic out of the Docker tenants' bridge reaches only local networks."""
    chains, tenant_rules = (docker_user_lines(tenant_egress, family) if tenant_egress
                            else ([], []))
    lines = [BEGIN_MARKER,
             "# Docker-published ports bypass UFW's INPUT rules: packets into a container are",
             "# forwarded after DNAT. Edit [firewall] in mushishi.toml, not this block.",
             "*filter",
             ":DOCKER-USER - [0:0]",
             f":{DOCKER_CHAIN} - [0:0]",
             *chains,
             *tenant_rules]
    for bridge in table.docker_bridges:
        lines.append(f"-A DOCKER-USER -o {bridge} -j {DOCKER_CHAIN}")
    lines += [
        "-A DOCKER-USER -j RETURN",
        f"-A {DOCKER_CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        f"-A {DOCKER_CHAIN} -m conntrack --ctstate INVALID -j DROP",
    ]
    for bridge in table.docker_bridges:
        lines.append(f"-A {DOCKER_CHAIN} -i {bridge} -j RETURN")
    for service in table.services:
        if service.exposure == "local":
            continue
        where = f"-i {table.tailnet_interface} " if service.exposure == "tailnet" else ""
        lines.append(f"-A {DOCKER_CHAIN} {where}-p {service.proto} -m conntrack --ctstate DNAT "
                     f"--ctorigdstport {service.port} -j RETURN")
    if table.log_drops:
        lines.append(f"-A {DOCKER_CHAIN} -m limit --limit 3/min --limit-burst 10 -j LOG "
                     f"--log-prefix \"[mushishi DOCKER BLOCK] \"")
    lines += [f"-A {DOCKER_CHAIN} -j DROP", "COMMIT", END_MARKER]
    if family == "ipv6":
        lines[0:1] = [BEGIN_MARKER, "# IPv6: needs Docker's ip6tables support (daemon.json)."]
    return "\n".join(lines) + "\n"


def merge_block(text: str, block: str) -> str:
    """`text` with any earlier mushishi block removed and `block` appended; idempotent."""
    lines = text.splitlines()
    begins = [i for i, line in enumerate(lines) if line == BEGIN_MARKER]
    ends = [i for i, line in enumerate(lines) if line == END_MARKER]
    if len(begins) != len(ends) or any(e < b for b, e in zip(begins, ends, strict=True)):
        raise BlockError("unbalanced mushishi markers; remove the damaged block by hand "
                         f"(lines starting {BEGIN_MARKER!r} .. {END_MARKER!r})")
    kept: list[str] = []
    skipping = False
    for line in lines:
        if line == BEGIN_MARKER:
            skipping = True
        if not skipping:
            kept.append(line)
        if line == END_MARKER:
            skipping = False
    return "".join(line + "\n" for line in kept) + block


def _quoted(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def render_ufw(table: Table, *, ufw: str, after_rules: str, after6_rules: str,
               source: str = "", tenant_egress: TenantEgress | None = None) -> str:
    """A POSIX sh script: remove stale mushishi rules, add the table's, install the blocks.

    Running it twice changes nothing the second time. It never enables UFW (that is the
    operator's call, made from a session that will survive it).
    """
    keep = " ".join(tag for tag, _ in ufw_rules(table))
    out = [
        "#!/bin/sh",
        "# mushishi firewall, UFW rendering of [firewall]" + (f" in {source}" if source else ""),
        "# Review, then run as root. Edit the config, not this script. It:",
        "#  1. deletes rules an earlier rendering added that the table no longer lists",
        "#  2. adds one rule per service and exposure (tagged 'mushishi:...')",
        "#  3. puts the DOCKER-USER block in after.rules and after6.rules (idempotent),",
        "#     with the Docker tenants' egress rules when a tenant has runtime = docker",
        "#  4. reloads UFW if it is active; it never enables it.",
        "# Limits: tailscaled accepts everything on "
        f"{table.tailnet_interface} before UFW sees it, so the",
        "# per-port tailnet rules below only matter with `tailscale up --netfilter-mode=off`",
        "# (the nftables rendering has no such gap). UFW's before.rules accepts ping from",
        "# anywhere; [firewall].icmp_echo applies to the nftables rendering only.",
        "set -eu",
        f"UFW={shlex.quote(ufw)}",
        '[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }',
        f"begin={shlex.quote(BEGIN_MARKER)}",
        f"end={shlex.quote(END_MARKER)}",
        "",
        "check_markers() {  # $1: rules file",
        '    if [ "$(grep -cxF "$begin" "$1" || true)" != "$(grep -cxF "$end" "$1" || true)" ]; '
        "then",
        '        echo "$1: unbalanced mushishi markers; remove the damaged block by hand" >&2',
        "        exit 1",
        "    fi",
        "}",
        "",
        "install_block() {  # $1: rules file; the block arrives on stdin",
        '    awk -v begin="$begin" -v end="$end" '
        "'$0 == begin {skip = 1} !skip {print} $0 == end {skip = 0}' \"$1\" > \"$1.mushishi-new\"",
        '    cat >> "$1.mushishi-new"',
        '    chmod --reference="$1" "$1.mushishi-new"',
        '    mv "$1.mushishi-new" "$1"',
        "}",
        "",
        "# Nothing changes if either file holds a damaged block.",
        f"check_markers {shlex.quote(after_rules)}",
        f"check_markers {shlex.quote(after6_rules)}",
        "",
        f"keep={shlex.quote(keep)}",
        'added=$("$UFW" show added)',
        'printf \'%s\\n\' "$added" | grep " comment \'' + TAG_PREFIX + '" | '
        "while IFS= read -r line; do",
        "    tag=${line##* comment \\'}; tag=${tag%\\'}",
        '    case " $keep " in *" $tag "*) continue ;; esac',
        "    spec=${line#ufw }; spec=${spec% comment *}",
        "    # ufw's own normal form of the rule, split into words on purpose",
        "    # shellcheck disable=SC2086",
        '    "$UFW" --force delete $spec',
        "done",
        "",
    ]
    out += ['"$UFW" ' + _quoted(argv) for argv in ufw_commands(table)]
    out.append("")
    for path, family in ((after_rules, "ipv4"), (after6_rules, "ipv6")):
        out.append(f"install_block {shlex.quote(path)} <<'MUSHISHI_BLOCK'")
        out.append(docker_user_block(table, family, tenant_egress).rstrip("\n"))
        out.append("MUSHISHI_BLOCK")
    out += [
        "",
        'if "$UFW" status | grep -q "^Status: active"; then "$UFW" reload; else',
        '    echo "UFW is inactive: rules are in place; enable it with: $UFW enable"',
        "fi",
        "",
    ]
    return "\n".join(out)
