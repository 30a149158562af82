"""The backup units' network: the off-box hosts they may reach, pinned by `mushishi install`,
and the check at each start that a host still resolves to what was pinned.

install resolves each off-box repository's host and renders, in the backup units,
`IPAddressAllow=` for exactly those addresses (the kernel's rule) and `MUSHISHI_PINNED_HOSTS`
(`host=addr,addr host2=addr`) so the runner can tell, before reaching a host, whether it now
resolves elsewhere: then that repository fails with one line naming its config key, instead
of restic hanging on a connect the kernel silently drops. Pure, except for the resolver
passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from ipaddress import ip_address

from mushishi.shared.locality import Resolver, parse_ip


def _normal(address: str) -> str:
    parsed = parse_ip(address.split("%", 1)[0])
    return str(parsed) if parsed is not None else address


def format_pins(pins: Mapping[str, Iterable[str]]) -> str:
    """`host=addr,addr host2=addr`, sorted, for the unit's environment."""
    return " ".join(f"{host}={','.join(sorted({_normal(a) for a in addresses}))}"
                    for host, addresses in sorted(pins.items()))


def parse_pins(text: str) -> dict[str, frozenset[str]]:
    """The inverse of format_pins; a malformed word raises ValueError."""
    pins: dict[str, frozenset[str]] = {}
    for word in text.split():
        host, equals, addresses = word.partition("=")
        if not equals or not host:
            raise ValueError(f"{word!r} is not host=address[,address]")
        pins[host] = frozenset(_normal(a) for a in addresses.split(",") if a)
    return pins


def resolve_hosts(hosts: Iterable[str], resolve: Resolver
                  ) -> tuple[dict[str, list[str]], dict[str, str]]:
    """(addresses of each host that resolved, why each other one did not); an IP literal is
    its own address."""
    found: dict[str, list[str]] = {}
    failed: dict[str, str] = {}
    for host in dict.fromkeys(hosts):
        if parse_ip(host) is not None:
            found[host] = [_normal(host)]
            continue
        try:
            addresses = sorted({_normal(a) for a in resolve(host)})
        except OSError as error:
            failed[host] = str(error.strerror or error)
            continue
        if addresses:
            found[host] = addresses
        else:
            failed[host] = "no address"
    return found, failed


def check_host(key: str, host: str, pins: Mapping[str, frozenset[str]] | None,
               resolve: Resolver) -> str | None:
    """None when `host` may be reached now; else one line naming the config key.

    `pins` is None outside the unit (a manual run): nothing was pinned, nothing confines.
    """
    if pins is None:
        return None
    pinned = pins.get(host)
    if not pinned:
        return (f"{key}: {host} was not pinned by `mushishi install`, so the backup unit "
                f"cannot reach it: run `mushishi install` after changing the config")
    if parse_ip(host) is not None:
        return None if _normal(host) in pinned else (
            f"{key}: {host} is not the address pinned by `mushishi install` "
            f"({', '.join(sorted(pinned))}): run `mushishi install` again")
    try:
        resolved = {_normal(a) for a in resolve(host)}
    except OSError as error:
        return (f"{key}: cannot resolve {host} ({error.strerror or error}); the backup unit "
                f"reaches it only at {', '.join(sorted(pinned, key=_sort_key))}")
    elsewhere = sorted(resolved - pinned, key=_sort_key)
    if elsewhere:
        return (f"{key}: {host} now resolves to {', '.join(elsewhere)}, not "
                f"{', '.join(sorted(pinned, key=_sort_key))} as pinned by `mushishi install`;"
                f" if the host really moved, check it and run `mushishi install` again")
    return None


def _sort_key(address: str) -> tuple[int, int | str]:
    try:
        parsed = ip_address(address)
    except ValueError:
        return (9, address)
    return (parsed.version, int(parsed))
