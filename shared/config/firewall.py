"""`[firewall]`: one table of exposed services, rendered to nftables and UFW."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

from mushishi.shared.config._base import AbsolutePath, Issue, Section
from mushishi.shared.locality import AddressError, parse_backend_url, parse_ip

if TYPE_CHECKING:
    from mushishi.shared.config.settings import MushishiSettings

Exposure = Literal["local", "tailnet", "lan"]

_SERVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
# Linux interface names: at most 15 bytes, no '/', ':', whitespace or quotes.
_INTERFACE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_BRIDGE = re.compile(r"^[A-Za-z0-9_.-]{1,14}\+?$|^[A-Za-z0-9_.-]{15}$")

EXPOSURE_HELP = (
    "`local`: loopback only; `tailnet`: loopback and the tailnet interface; "
    "`lan`: every interface (loopback, tailnet, the LAN and anything else the box is on)."
)


def _interface(value: str) -> str:
    if not _INTERFACE.match(value):
        raise ValueError(
            f"{value!r} is not a network interface name (1-15 characters: letters, digits, "
            "'_', '.', '-')")
    return value


class FirewallService(Section):
    """One listening service and who may reach it."""

    name: str = Field(description="Short name (letters, digits, `._-`), used in rule comments "
                      "and by `verify`.")
    port: int = Field(gt=0, lt=65536, description="Port number the service listens on (for a "
                      "Docker-published port: the port published on the host).")
    proto: Literal["tcp", "udp"] = Field(default="tcp", description="Transport protocol.")
    exposure: Exposure = Field(description="Who may reach it. " + EXPOSURE_HELP)
    from_containers: bool = Field(
        default=False,
        description="Also accept connections from the Docker bridges (a container calling "
        "this host service, e.g. through host.docker.internal). `lan` services already are.",
    )
    description: str = Field(default="", description="What it is, shown by `verify`.")

    @field_validator("name")
    @classmethod
    def _name_is_simple(cls, value: str) -> str:
        if not _SERVICE_NAME.match(value):
            raise ValueError(f"{value!r} is not a service name (1-32 characters: letters, "
                             "digits, '.', '_', '-'; starting with a letter or digit)")
        return value


class FirewallSsh(Section):
    """SSH, handled apart from the other services because a mistake locks the operator out."""

    port: int = Field(default=22, gt=0, lt=65536, description="TCP port sshd listens on.")
    exposure: Exposure = Field(
        default="tailnet",
        description="Who may open new SSH connections. " + EXPOSURE_HELP + " `tailnet` is "
        "right once Tailscale is up; until then use `lan`. `mushishi firewall apply` refuses "
        "(lock-out guard) a ruleset that would drop new SSH connections from the interface "
        "your own SSH session comes in on, or tailnet-only SSH while the tailnet interface "
        "is down.",
    )


class FirewallSettings(Section):
    """Inputs of `mushishi firewall render|apply|verify`."""

    tailnet_interface: str = Field(
        default="tailscale0",
        description="The tailnet interface; rules are keyed on interfaces, not address ranges.",
    )
    docker_bridges: list[str] = Field(
        default=["docker0", "br-+"],
        description="Docker bridge interfaces (a trailing `+` matches any suffix, as in "
        "iptables). Traffic forwarded into them is dropped unless it comes from the tailnet "
        "or another bridge and targets a published port in `services`.",
    )
    ssh: FirewallSsh = Field(default_factory=FirewallSsh, description="SSH access.")
    services: list[FirewallService] = Field(
        default=[],
        description="Exposed services. Anything not listed is reachable from loopback only.",
    )
    icmp_echo: Exposure = Field(
        default="tailnet",
        description="Who may ping the box. " + EXPOSURE_HELP + " Error and IPv6 neighbour "
        "discovery ICMP is always accepted: IPv6 breaks without it.",
    )
    log_drops: bool = Field(
        default=True,
        description="Log dropped packets to the kernel log, rate-limited (prefix "
        "`mushishi-firewall drop`).",
    )
    confirm_timeout_s: int = Field(
        default=60, ge=5, le=3600,
        description="Seconds `mushishi firewall apply` waits for a confirmation before it "
        "restores the previous rules.",
    )
    state_dir: AbsolutePath = Field(
        default="/var/lib/mushishi/firewall",
        description="Previous, applied and confirmed rulesets, the pending confirmation and "
        "the result of the last change (last.json).",
    )
    textfile_dir: AbsolutePath | None = Field(
        default="/var/lib/prometheus/node-exporter",
        description="node_exporter textfile collector directory for mushishi_firewall.prom "
        "(pending confirmation, last change); unset to write none.",
    )
    nft: AbsolutePath = Field(default="/usr/sbin/nft", description="The nft binary.")
    ip: AbsolutePath = Field(
        default="/usr/bin/ip",
        description="The ip binary (iproute2), used by the SSH lock-out guard.",
    )
    ufw: AbsolutePath = Field(default="/usr/sbin/ufw", description="The ufw binary, "
                              "named in the rendered UFW script.")
    ufw_after_rules: AbsolutePath = Field(
        default="/etc/ufw/after.rules",
        description="Where the rendered UFW script puts the IPv4 DOCKER-USER block.",
    )
    ufw_after6_rules: AbsolutePath = Field(
        default="/etc/ufw/after6.rules",
        description="Where the rendered UFW script puts the IPv6 DOCKER-USER block.",
    )

    @field_validator("tailnet_interface")
    @classmethod
    def _tailnet_is_an_interface(cls, value: str) -> str:
        return _interface(value)

    @field_validator("docker_bridges")
    @classmethod
    def _bridges_are_interfaces(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _BRIDGE.match(name):
                raise ValueError(
                    f"{name!r} is not a bridge interface name (1-15 characters: letters, "
                    "digits, '_', '.', '-', optionally ending in '+' as a wildcard)")
        return value


def _on_this_box(host: str | None) -> bool:
    """A backend host that is this machine's loopback (what tenants and the CPU floor bind)."""
    if host is None:
        return False
    if host == "localhost":
        return True
    address = parse_ip(host)
    return address is not None and (address.is_loopback or address.is_unspecified)


def exposure_warnings(settings: MushishiSettings) -> list[Issue]:
    """Ports of this box's model servers that the firewall table opens beyond loopback:
    requests sent there skip the router (its tiers, keys, journal, metrics and sovereignty
    checks). Warnings, not errors: exposing ComfyUI's web UI on purpose exposes its API too."""
    servers: dict[int, list[str]] = {}
    for name, backend in settings.backends.items():
        try:
            address = parse_backend_url(backend.url)
        except AddressError:
            continue  # reported by the router's checks
        if address.port is not None and _on_this_box(address.host):
            servers.setdefault(address.port, []).append(f"backend {name} (backends.{name}.url)")
    for name, tenant in settings.tenants.items():
        if tenant.port is not None:
            servers.setdefault(tenant.port, []).append(f"tenant {name} (tenants.{name}.port)")
    floor = settings.cpu_floor
    servers.setdefault(floor.port, []).append("the CPU floor (cpu_floor.port)")
    warnings = []
    for index, service in enumerate(settings.firewall.services):
        owners = servers.get(service.port)
        if service.proto != "tcp" or service.exposure == "local" or not owners:
            continue
        reach = "the tailnet" if service.exposure == "tailnet" else "every interface"
        owners = list(dict.fromkeys(owners))
        warnings.append(Issue(f"firewall.services[{index}]", (
            f"{service.name!r} exposes tcp {service.port} to {reach}: it is "
            f"{' and '.join(owners)}, so requests there skip the router (tiers, keys, "
            f"journal, sovereignty checks); drop it from firewall.services (or set exposure = "
            f"\"local\") and send clients to the router")))
    return warnings


def check(settings: MushishiSettings) -> list[Issue]:
    """One service per name and per port/protocol; SSH only in [firewall.ssh]."""
    section = settings.firewall
    issues: list[Issue] = []
    names: dict[str, int] = {}
    ports: dict[tuple[int, str], str] = {(section.ssh.port, "tcp"): "firewall.ssh"}
    for index, service in enumerate(section.services):
        where = f"firewall.services[{index}]"
        if service.name in names:
            issues.append(Issue(f"{where}.name", f"duplicate service name {service.name!r} "
                                f"(also firewall.services[{names[service.name]}])"))
        else:
            names[service.name] = index
        key = (service.port, service.proto)
        if key == (section.ssh.port, "tcp"):
            issues.append(Issue(f"{where}.port", f"tcp {service.port} is SSH: configure it "
                                "in [firewall.ssh] (port, exposure), not in services"))
        elif key in ports:
            issues.append(Issue(f"{where}.port", f"{service.proto} {service.port} is already "
                                f"listed by {ports[key]}"))
        else:
            ports[key] = f"{where} ({service.name})"
    if section.tailnet_interface in section.docker_bridges:
        issues.append(Issue("firewall.docker_bridges", f"{section.tailnet_interface!r} is the "
                            "tailnet interface (firewall.tailnet_interface), not a bridge"))
    return issues
