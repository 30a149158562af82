"""Reading the IPAddressAllow= lists `mushishi install` renders."""

from __future__ import annotations

from ipaddress import ip_address, ip_network


def allow_entries(dropin: str) -> list[str]:
    """The IPAddressAllow= entries in effect after the drop-in (an empty one resets)."""
    entries: list[str] = []
    for line in dropin.splitlines():
        if line.startswith("IPAddressAllow="):
            value = line.removeprefix("IPAddressAllow=")
            entries = [] if not value else [*entries, *value.split()]
    return entries


def admits(dropin: str, address: str) -> bool:
    """Whether the drop-in's allow list admits `address`."""
    target = ip_address(address)
    return any(target.version == ip_network(e).version and target in ip_network(e)
               for e in allow_entries(dropin))
