"""Where Docker tenants' traffic may go: only to `router.local_networks` (pure rendering).

Docker tenants run on one network of mushishi's own (`[gpu] docker_network`, bridge
`br-mushishi`). Everything the containers send that the box forwards, i.e. everything not
addressed to the box itself or to another container on that bridge, may reach only the
local networks; the rest is refused with ICMP "administratively prohibited", so that the
tenant runner's confinement probe can tell this firewall's answer from a black hole. DNS
(port 53) is refused even to local resolvers: a resolver forwards names upstream, and a
name can carry prompt text.

Two renderings of the same rule:

* nftables (primary): a table of its own, `inet mushishi_tenants`, with one forward chain
  that runs before Docker's and iptables' chains (priority filter - 2). A reject in any
  base chain is final, whatever Docker accepts later. mushishi-tenant-network.service
  loads it (`mushishi-tenant network`) before any Docker tenant starts; it is a separate
  table from `inet mushishi` because it must be in force on every box with Docker tenants,
  without the interactive apply/confirm of the exposure table, and it cannot lock anyone
  out (it matches only traffic arriving from br-mushishi).
* iptables, for the UFW rendering's DOCKER-USER block (boxes that keep UFW).
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import TYPE_CHECKING, Literal

from mushishi.shared.config.gpu import DOCKER_BRIDGE

if TYPE_CHECKING:
    from mushishi.shared.config.settings import MushishiSettings

TENANT_TABLE_NAME = "mushishi_tenants"
TENANT_TABLE = f"inet {TENANT_TABLE_NAME}"
DOCKER_USER_CHAIN = "mushishi-tenant-egress"
PRIORITY = "filter - 2"
REFUSAL_COMMENT = "anything else: Docker tenants reach only router.local_networks"

Family = Literal["ipv4", "ipv6"]


@dataclass(frozen=True, slots=True)
class TenantEgress:
    """The tenants' bridge, its subnet, and the networks its traffic may reach."""

    bridge: str
    subnet: IPv4Network
    networks: tuple[IPv4Network | IPv6Network, ...]

    @classmethod
    def from_settings(cls, settings: MushishiSettings) -> TenantEgress:
        """From `[gpu] docker_subnet` and `router.local_networks`."""
        return cls(DOCKER_BRIDGE, settings.gpu.docker_subnet,
                   tuple(settings.router.local_networks))

    def of_family(self, version: int) -> list[IPv4Network | IPv6Network]:
        """The allowed networks of one IP version, in config order."""
        return [n for n in self.networks if n.version == version]


def _set(name: str, kind: str, networks: list[IPv4Network | IPv6Network]) -> list[str]:
    lines = [f"\tset {name} {{", f"\t\ttype {kind}", "\t\tflags interval",
             '\t\tcomment "router.local_networks"']
    if networks:
        lines.append("\t\telements = { " + ", ".join(str(n) for n in networks) + " }")
    return [*lines, "\t}"]


def render_tenant_nft(egress: TenantEgress, *, source: str = "") -> str:
    """The ruleset for `nft -f`: replaces table inet mushishi_tenants atomically."""
    bridge = f'"{egress.bridge}"'
    return "\n".join([
        "#!/usr/sbin/nft -f",
        f"# mushishi tenant egress: table {TENANT_TABLE}, rendered from [gpu] docker_subnet "
        "and [router] local_networks" + (f" in {source}" if source else "") + ".",
        "# Loaded by mushishi-tenant-network.service; edit the config, not this file.",
        "",
        f"table {TENANT_TABLE}",
        f"delete table {TENANT_TABLE}",
        "",
        f"table {TENANT_TABLE} {{",
        *_set("local_v4", "ipv4_addr", egress.of_family(4)),
        "",
        *_set("local_v6", "ipv6_addr", egress.of_family(6)),
        "",
        "\tchain forward {",
        f"\t\ttype filter hook forward priority {PRIORITY}; policy accept;",
        f'\t\tiifname != {bridge} accept comment "not from a Docker tenant: not ours to judge"',
        f'\t\toifname {bridge} accept comment "between the tenants\' own containers"',
        '\t\tct state established,related accept comment "replies to clients of a tenant"',
        "\t\tmeta l4proto { tcp, udp } th dport 53 counter reject with icmpx type "
        'admin-prohibited comment "no name resolution, not even by a local resolver"',
        '\t\tip daddr @local_v4 accept comment "router.local_networks"',
        '\t\tip6 daddr @local_v6 accept comment "router.local_networks"',
        f'\t\tcounter reject with icmpx type admin-prohibited comment "{REFUSAL_COMMENT}"',
        "\t}",
        "}",
        "",
    ])


def docker_user_lines(egress: TenantEgress, family: Family) -> tuple[list[str], list[str]]:
    """(chain declarations, rules) for the DOCKER-USER block of after.rules/after6.rules."""
    version = 4 if family == "ipv4" else 6
    reject = "icmp-admin-prohibited" if family == "ipv4" else "icmp6-adm-prohibited"
    chain = DOCKER_USER_CHAIN
    rules = [
        f"-A DOCKER-USER -i {egress.bridge} -j {chain}",
        f"-A {chain} -o {egress.bridge} -j RETURN",
        f"-A {chain} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        f"-A {chain} -p udp --dport 53 -j REJECT --reject-with {reject}",
        f"-A {chain} -p tcp --dport 53 -j REJECT --reject-with {reject}",
        *(f"-A {chain} -d {network} -j RETURN" for network in egress.of_family(version)),
        f"-A {chain} -j REJECT --reject-with {reject}",
    ]
    return [f":{chain} - [0:0]"], rules
