"""HTTP clients to the backends and to the egress: one session per backend, no redirects,
no proxies, and a connect-time check of the address of every new connection.

Local backends are reached directly; every socket the client opens passes through
`guarded_socket_factory`, which sees the resolved address right before `connect()` and
refuses anything outside `router.local_networks`. Cloud backends are reached only through
the egress daemon's unix socket, and never for a T1 or T1-strict profile.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import ThreadedResolver

from mushishi.services.router.core import Hop
from mushishi.shared.config.router import RouterSettings
from mushishi.shared.locality import (
    IPNetwork,
    address_is_local,
    parse_backend_url,
)

log = logging.getLogger("mushishi.router.upstream")

CONNECT_CHECK_TEST_ENV = "MUSHISHI_TEST_DISABLE_CONNECT_CHECK"
EGRESS_ORIGIN = "http://egress"


class SovereigntyRefusal(OSError):
    """The connect-time check refused an address outside router.local_networks."""

    def __init__(self, address: str) -> None:
        super().__init__(errno.EPERM, f"connect-time check refused {address}: outside "
                                      "router.local_networks")
        self.address = address


def refused_by_policy(error: BaseException) -> str | None:
    """'connect-time' or 'kernel' when a connection error is a sovereignty refusal, else None.

    The kernel's IPAddressDeny= makes connect() fail with EPERM; the connect-time check uses
    the same errno with its own message.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.EPERM, errno.EACCES):
            return "connect-time" if "connect-time check" in str(current) else "kernel"
        if isinstance(current, aiohttp.ClientConnectorError):
            current = current.os_error
            continue
        current = current.__cause__ or current.__context__
    return None


def guarded_socket_factory(
    networks: list[IPNetwork], on_refusal: Callable[[str], None]
) -> Callable[[tuple], socket.socket]:
    """A socket factory for aiohttp that refuses non-local addresses before connect()."""

    def factory(addr_info: tuple) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        host = str(sockaddr[0])
        if not address_is_local(host, networks):
            on_refusal(host)
            raise SovereigntyRefusal(host)
        sock = socket.socket(family=family, type=type_, proto=proto)
        if family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    return factory


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a hop's requests go: a session and the URL prefix to put before `/chat/...`."""

    session: aiohttp.ClientSession
    prefix: str  # "http://127.0.0.1:8000/v1" or "http://egress/v1"
    health_url: str | None
    models_url: str | None
    via_egress: bool


def _session(connector: aiohttp.BaseConnector, connect_timeout: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=connector,
        trust_env=False,  # proxy variables are ignored on every hop
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout),
        skip_auto_headers=("User-Agent",),
    )


class Upstreams:
    """The sessions of every backend and of the egress; close() when done."""

    def __init__(
        self,
        hops: Mapping[str, Hop],
        urls: Mapping[str, str],
        health_urls: Mapping[str, str | None],
        router: RouterSettings,
        *,
        connect_check: bool,
        on_refusal: Callable[[str], None],
        resolver: AbstractResolver | None = None,
    ) -> None:
        self.connect_check = connect_check
        self._endpoints: dict[str, Endpoint] = {}
        factory = (guarded_socket_factory(list(router.local_networks), on_refusal)
                   if connect_check else None)
        # A new connection per cloud hop (a unix connect costs microseconds): an idle pooled
        # connection closed by a restarting egress would fail a request, while a new one
        # waits in mushishi-egress.socket's backlog for the next instance.
        self.egress = _session(
            aiohttp.UnixConnector(path=router.egress_socket, limit=0, force_close=True),
            router.connect_timeout_s)
        for name, hop in hops.items():
            if not hop.local:
                self._endpoints[name] = Endpoint(self.egress, EGRESS_ORIGIN + "/v1", None, None,
                                                 True)
                continue
            address = parse_backend_url(urls[name])
            connector: aiohttp.BaseConnector
            if address.unix_path is not None:
                connector = aiohttp.UnixConnector(path=address.unix_path, limit=0)
            else:
                connector = aiohttp.TCPConnector(
                    limit=0,
                    use_dns_cache=False,  # every new connection resolves, and is checked, anew
                    resolver=resolver or ThreadedResolver(),
                    socket_factory=factory,
                    ssl=address.scheme == "https",
                )
            session = _session(connector, router.connect_timeout_s)
            prefix = address.origin + address.base_path
            # A unix-socket backend is probed at /health on its own socket.
            health = f"{address.origin}/health"
            if address.unix_path is None and health_urls.get(name):
                health = str(health_urls[name])
            self._endpoints[name] = Endpoint(session, prefix, health, prefix + "/models", False)

    def endpoint(self, name: str) -> Endpoint:
        """The endpoint of backend `name`."""
        return self._endpoints[name]

    async def close(self) -> None:
        """Close every session."""
        seen = set()
        for endpoint in [*self._endpoints.values(), Endpoint(self.egress, "", None, None, True)]:
            if id(endpoint.session) not in seen:
                seen.add(id(endpoint.session))
                await endpoint.session.close()
