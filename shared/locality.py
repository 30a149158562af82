"""Is a backend local? URL parsing and address checks shared by the router and the egress.

"Local" is decided by address, never by a flag (DESIGN.md §2): a backend is local when its
URL is a unix socket, or its host is an IP literal inside `router.local_networks`, or a
hostname listed in `router.local_hosts` whose every resolved address is inside those
networks. Anything else is cloud. Parsing is strict and fails closed: userinfo, odd IP
spellings (`127.1`, `0x7f.1`, `2130706433`) and unlisted hostnames are never local.

A unix socket is local unless it is the egress's socket (the way out) or the router's own
(a loop back in, past the profile): compared by identity, the device and inode of the
socket file, or where a path does not exist (yet) by the path with every symlink, `//`,
`/./` and `..` resolved, never by spelling (`/var/run/…`, `/proc/self/root/…` and a
symlink all name the same socket). The router checks the identity again at every connection
(services/router/upstream.py).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from pathlib import Path
from urllib.parse import urlsplit

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
Resolver = Callable[[str], list[str]]

UNIX_PREFIX = "unix:"
UNIX_API_PATH = "/v1"  # a unix-socket backend serves the OpenAI API under /v1
_SCHEMES = {"http": 80, "https": 443}
_FORBIDDEN_CHARACTERS = set(" \t\r\n\\\x00") | {chr(c) for c in range(0x20)} | {"\x7f"}


class AddressError(ValueError):
    """A backend URL that cannot be used; the message says what is wrong with it."""


@dataclass(frozen=True, slots=True)
class BackendAddress:
    """A parsed backend URL: a unix socket, or scheme + host + port + base path."""

    url: str
    scheme: str  # "http", "https" or "unix"
    host: str | None  # lower-case hostname or IP literal (no brackets); None for unix
    port: int | None
    base_path: str  # "/v1" (no trailing slash)
    ip: IPAddress | None  # the host as an IP literal, IPv4-mapped IPv6 unwrapped
    unix_path: str | None

    @property
    def origin(self) -> str:
        """scheme://host:port, for building probe URLs ("http://unix" for unix sockets)."""
        if self.unix_path is not None:
            return "http://unix"
        host = f"[{self.host}]" if self.ip is not None and self.ip.version == 6 else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Locality:
    """Whether a backend is local, and a sentence saying why."""

    local: bool
    reason: str


def normalize_ip(address: IPAddress) -> IPAddress:
    """Unwrap IPv4-mapped IPv6 (::ffff:a.b.c.d) to the IPv4 address it really reaches."""
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_ip(text: str) -> IPAddress | None:
    """A strictly spelled IP literal (normalized), or None for anything else."""
    try:
        return normalize_ip(ip_address(text))
    except ValueError:
        return None


def address_is_local(address: IPAddress | str, networks: Iterable[IPNetwork]) -> bool:
    """True when `address` (an IP, IPv4-mapped unwrapped, scope id ignored) is in `networks`."""
    if isinstance(address, str):
        parsed = parse_ip(address.split("%", 1)[0])
        if parsed is None:
            return False
        address = parsed
    else:
        address = normalize_ip(address)
    if isinstance(address, IPv6Address) and address.scope_id:
        address = IPv6Address(str(address).split("%", 1)[0])
    return any(address.version == net.version and address in net for net in networks)


def parse_backend_url(url: str) -> BackendAddress:
    """Parse `http(s)://HOST[:PORT][/base]` or `unix:/abs/path.sock`; raise AddressError."""
    if not url or any(ch in _FORBIDDEN_CHARACTERS for ch in url):
        raise AddressError(f"{url!r} contains whitespace, a backslash or a control character")
    if url.startswith(UNIX_PREFIX):
        path = url.removeprefix(UNIX_PREFIX)
        if not path.startswith("/") or path.startswith("//"):
            raise AddressError(f"unix socket path must be absolute in {url!r} (unix:/run/x.sock)")
        return BackendAddress(url, "unix", None, None, UNIX_API_PATH, None, path)
    try:
        parts = urlsplit(url)
    except ValueError as error:
        raise AddressError(f"{url!r} is not a URL: {error}") from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise AddressError(f"{url!r}: scheme must be http, https or unix: (got {parts.scheme!r})")
    if "@" in parts.netloc:
        raise AddressError(f"{url!r} carries userinfo (user@host); credentials never go in a URL")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise AddressError(f"{url!r} has a query or fragment; give only scheme, host, port, path")
    netloc = parts.netloc
    if not netloc:
        raise AddressError(f"{url!r} has no host")
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            raise AddressError(f"{url!r}: unterminated IPv6 literal")
        host = netloc[1:end]
        rest = netloc[end + 1:]
        literal = parse_ip(host.split("%", 1)[0])
        if literal is None or ":" not in host:
            raise AddressError(f"{url!r}: {host!r} is not an IPv6 address")
    else:
        host, colon, port_text = netloc.partition(":")
        rest = colon + port_text
        literal = parse_ip(host)
    if rest and not rest.startswith(":"):
        raise AddressError(f"{url!r}: unexpected {rest!r} after the host")
    port_text = rest[1:]
    if rest and (not port_text.isdigit() or not 0 < int(port_text) < 65536):
        raise AddressError(f"{url!r}: port must be 1-65535")
    port = int(port_text) if port_text else _SCHEMES[scheme]
    host = host.lower().rstrip(".")
    if not host:
        raise AddressError(f"{url!r} has no host")
    base_path = parts.path.rstrip("/")
    return BackendAddress(url, scheme, host, port, base_path, literal, None)


def file_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file `path` names, symlinks followed; None when it is absent."""
    try:
        found = Path(path).stat()
    except (OSError, ValueError):
        return None
    return found.st_dev, found.st_ino


def same_unix_socket(path: str, other: str) -> bool:
    """True when two unix socket paths name the same socket: the same file when both exist,
    else the same path once resolved (symlinks, `//`, `/./`, `..`, /proc/self/root)."""
    identity, other_identity = file_identity(path), file_identity(other)
    if identity is not None and other_identity is not None:
        return identity == other_identity
    return os.path.realpath(path) == os.path.realpath(other)


EGRESS_SOCKET_REFUSAL = "is router.egress_socket, the way to cloud backends"
OWN_SOCKET_REFUSAL = ("is the router's own socket (router.listen): a backend may not be the "
                      "router itself")


def unix_socket_refusal(path: str, egress_socket: str | None,
                        own_sockets: Iterable[str] = ()) -> str | None:
    """Why the unix socket `path` can never be a local backend (it is the egress's socket, or
    the router's own), as a phrase after the path; None when it may be one."""
    if egress_socket is not None and same_unix_socket(path, egress_socket):
        return EGRESS_SOCKET_REFUSAL
    if any(same_unix_socket(path, own) for own in own_sockets):
        return OWN_SOCKET_REFUSAL
    return None


def system_resolver(host: str) -> list[str]:
    """Every address `host` resolves to now (getaddrinfo, TCP)."""
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def classify(
    address: BackendAddress,
    networks: Sequence[IPNetwork],
    local_hosts: Iterable[str],
    resolve: Resolver | None = None,
    egress_socket: str | None = None,
    own_sockets: Iterable[str] = (),
) -> Locality:
    """Decide locality of a parsed backend address; `resolve` checks listed hostnames now.

    A unix socket is local, except `egress_socket` (router.egress_socket, the way out to
    the cloud) and `own_sockets` (the router's unix listen addresses), by identity."""
    if address.unix_path is not None:
        refusal = unix_socket_refusal(address.unix_path, egress_socket, own_sockets)
        if refusal is not None:
            return Locality(False, f"unix socket {address.unix_path} {refusal}")
        return Locality(True, f"unix socket {address.unix_path}")
    if address.ip is not None:
        if address_is_local(address.ip, networks):
            return Locality(True, f"{address.ip} is inside router.local_networks")
        return Locality(False, f"{address.ip} is outside router.local_networks "
                               f"({', '.join(str(n) for n in networks)})")
    assert address.host is not None
    listed = {h.lower().rstrip(".") for h in local_hosts}
    if address.host not in listed:
        return Locality(False, f"hostname {address.host!r} is not listed in router.local_hosts")
    if resolve is None:
        return Locality(True, f"hostname {address.host!r} is listed in router.local_hosts")
    try:
        resolved = resolve(address.host)
    except OSError as error:
        # Not resolvable now (MagicDNS not up yet, say): every connection is checked anyway.
        return Locality(True, f"hostname {address.host!r} is listed in router.local_hosts "
                              f"(does not resolve now: {error}; checked at every connection)")
    outside = [a for a in resolved if not address_is_local(a, networks)]
    if outside:
        return Locality(False, f"hostname {address.host!r} resolves to {', '.join(outside)}, "
                               f"outside router.local_networks")
    return Locality(True, f"hostname {address.host!r} is listed in router.local_hosts and "
                          f"resolves to {', '.join(resolved) or 'nothing'}")


def backend_locality(
    url: str,
    networks: Sequence[IPNetwork],
    local_hosts: Iterable[str],
    resolve: Resolver | None = None,
    egress_socket: str | None = None,
    own_sockets: Iterable[str] = (),
) -> Locality:
    """Locality of a backend URL; an unparsable URL is never local."""
    try:
        address = parse_backend_url(url)
    except AddressError as error:
        return Locality(False, str(error))
    return classify(address, networks, local_hosts, resolve, egress_socket, own_sockets)
