"""The table of exposed services, and who may reach each one (pure).

Everything the renderers and `verify` say comes from here: a service's exposure decides
which *sources* (the interfaces a packet arrives on) may open new connections to it,
whether it listens on the host or is a Docker-published port reached by forwarding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mushishi.shared.config.firewall import Exposure, FirewallSettings

TABLE_FAMILY = "inet"
TABLE_NAME = "mushishi"

Proto = Literal["tcp", "udp"]
Source = Literal["loopback", "tailnet", "lan", "containers"]
SOURCES: tuple[Source, ...] = ("loopback", "tailnet", "lan", "containers")

# Sources that may open connections to a service, by exposure ("lan" means every interface).
_INPUT_SOURCES: dict[str, frozenset[Source]] = {
    "local": frozenset({"loopback"}),
    "tailnet": frozenset({"loopback", "tailnet"}),
    "lan": frozenset(SOURCES),
}


@dataclass(frozen=True, slots=True)
class Service:
    """One row of the table."""

    name: str
    port: int
    proto: Proto
    exposure: Exposure
    from_containers: bool = False
    description: str = ""

    @property
    def key(self) -> str:
        """`tcp/8000`, how verify and error messages name a port."""
        return f"{self.proto}/{self.port}"


@dataclass(frozen=True, slots=True)
class Table:
    """What the firewall enforces, independent of nftables or UFW syntax."""

    tailnet_interface: str
    docker_bridges: tuple[str, ...]
    services: tuple[Service, ...]
    icmp_echo: Exposure
    log_drops: bool

    def service(self, name: str) -> Service:
        """The service called `name` (KeyError if none)."""
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)

    def ports(self, exposure: Exposure, proto: Proto) -> list[int]:
        """Sorted ports of one exposure and protocol."""
        return sorted(s.port for s in self.services
                      if s.exposure == exposure and s.proto == proto)


def build_table(settings: FirewallSettings) -> Table:
    """The table from `[firewall]`: SSH first, then the services in config order."""
    ssh = Service("ssh", settings.ssh.port, "tcp", settings.ssh.exposure,
                  description="OpenSSH ([firewall.ssh])")
    services = [
        Service(s.name, s.port, s.proto, s.exposure, s.from_containers, s.description)
        for s in settings.services
    ]
    return Table(
        tailnet_interface=settings.tailnet_interface,
        docker_bridges=tuple(settings.docker_bridges),
        services=(ssh, *services),
        icmp_echo=settings.icmp_echo,
        log_drops=settings.log_drops,
    )


def input_allowed(service: Service, source: Source) -> bool:
    """May a new connection from `source` reach `service` listening on the host?"""
    if source == "containers" and service.from_containers:
        return True
    return source in _INPUT_SOURCES[service.exposure]


def forward_allowed(service: Service, source: Source) -> bool:
    """May a new connection from `source` reach `service` as a Docker-published port?

    Containers reach each other through the bridges whatever the table says (Docker's
    own isolation still applies); loopback never forwards.
    """
    if source == "containers":
        return True
    if source == "loopback":
        return False
    return source in _INPUT_SOURCES[service.exposure]


def expected_matrix(table: Table) -> dict[tuple[str, str, Source], bool]:
    """(service name, "input"|"forward", source) -> allowed, for every service and source."""
    matrix: dict[tuple[str, str, Source], bool] = {}
    for service in table.services:
        for source in SOURCES:
            matrix[(service.name, "input", source)] = input_allowed(service, source)
            if source != "loopback":
                matrix[(service.name, "forward", source)] = forward_allowed(service, source)
    return matrix


def nft_interface(name: str) -> str:
    """An interface pattern in nftables syntax: iptables' trailing `+` becomes `*`."""
    return name[:-1] + "*" if name.endswith("+") else name


def source_of(interface: str, table: Table) -> Source:
    """Which source a packet arriving on `interface` counts as."""
    if interface == "lo":
        return "loopback"
    if interface == table.tailnet_interface:
        return "tailnet"
    for bridge in table.docker_bridges:
        if interface == bridge or (bridge.endswith("+") and interface.startswith(bridge[:-1])):
            return "containers"
    return "lan"
