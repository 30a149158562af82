"""`[firewall]`: one table of exposed services, rendered to nftables and UFW."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mushishi.shared.config._base import Section


class FirewallService(Section):
    """One listening service and who may reach it."""

    name: str = Field(description="Short name, used in rule comments.")
    port: int = Field(gt=0, lt=65536, description="Port number.")
    proto: Literal["tcp", "udp"] = Field(default="tcp", description="Transport protocol.")
    exposure: Literal["tailnet", "local", "lan"] = Field(
        description="`local`: loopback only; `tailnet`: loopback and the tailnet interface; "
        "`lan`: also the LAN."
    )
    description: str = Field(default="", description="What it is, shown by `verify`.")


class FirewallSettings(Section):
    """Inputs of `mushishi firewall render|apply|verify`."""

    tailnet_interface: str = Field(default="tailscale0", description="The tailnet interface.")
    docker_bridges: list[str] = Field(
        default=["docker0", "br-+"], description="Docker bridge interfaces (`+` is a wildcard)."
    )
    services: list[FirewallService] = Field(default=[], description="Exposed services.")
