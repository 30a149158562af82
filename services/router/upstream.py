"""Where the router's requests go: a connection pool per backend origin and one to the egress,
and the connect-time check of every new connection.

Local backends are reached directly; every TCP connection is opened here, by resolving the
backend's host anew and passing each address through `guarded_socket_factory`, which refuses
anything outside `router.local_networks` before `connect()`. A local unix-socket backend is
checked by identity at every connection (`local_unix_connect`): the socket file it names now
(its device and inode, symlinks followed, then connected through that very file) must not be
the egress's socket or the router's own, and the peer the kernel connected us to must not
be the router itself or a process of mushishi-egress. Cloud backends are reached only
through the egress daemon's unix socket (a new connection per request), and never for a T1
or T1-strict profile. The pools speak HTTP/1.1 (`http1`): no redirects, no proxies.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from mushishi.services.router.core import Hop
from mushishi.services.router.http1 import Connect, Pool
from mushishi.shared.config.router import RouterSettings, unix_listen_paths
from mushishi.shared.locality import (
    EGRESS_SOCKET_REFUSAL,
    OWN_SOCKET_REFUSAL,
    BackendAddress,
    IPNetwork,
    address_is_local,
    file_identity,
    parse_backend_url,
)
from mushishi.shared.peers import PeerCredentials, cgroup_parts, peer_credentials
from mushishi.shared.t1_readers import EGRESS_UNIT

log = logging.getLogger("mushishi.router.upstream")

EGRESS_HOST = "egress"


class SovereigntyRefusal(OSError):
    """The connect-time check refused an address outside router.local_networks, or a unix
    socket that is the egress's or the router's own."""

    def __init__(self, address: str, why: str = "outside router.local_networks") -> None:
        super().__init__(errno.EPERM, f"connect-time check refused {address}: {why}")
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
        os_error = getattr(current, "os_error", None)  # aiohttp's or http1's ConnectFailed
        if isinstance(os_error, OSError):
            current = os_error
            continue
        current = current.__cause__ or current.__context__
    return None


OnRefusal = Callable[[SovereigntyRefusal], None]


def guarded_socket_factory(
    networks: list[IPNetwork], on_refusal: OnRefusal
) -> Callable[[tuple], socket.socket]:
    """A socket factory (getaddrinfo's tuples in) that refuses non-local addresses before
    connect()."""

    def factory(addr_info: tuple) -> socket.socket:
        host = str(addr_info[4][0])
        if not address_is_local(host, networks):
            refusal = SovereigntyRefusal(host)
            on_refusal(refusal)
            raise refusal
        return plain_socket(addr_info)

    return factory


def plain_socket(addr_info: tuple) -> socket.socket:
    """A TCP socket for one of getaddrinfo's tuples, with Nagle off."""
    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family=family, type=type_, proto=proto)
    if family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


async def _addresses(host: str, port: int, literal: bool) -> list[tuple]:
    """getaddrinfo's tuples for host:port, resolved now (an IP literal is not looked up)."""
    if literal:
        if ":" in host:
            return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                     (host, port, 0, 0))]
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_ADDRCONFIG)
    unique = []
    for info in infos:
        if info not in unique:
            unique.append(info)
    return unique


def _one_error(errors: Sequence[OSError]) -> OSError:
    """What to raise when every address failed: the error itself when there was one (or all
    had the same errno), else an OSError naming them all."""
    if len({error.errno for error in errors}) == 1:
        return errors[0]
    return OSError("multiple errors: " + "; ".join(str(error) for error in errors))


def tcp_connect(address: BackendAddress, connect_timeout_s: float,
                socket_factory: Callable[[tuple], socket.socket]) -> Connect:
    """Open connections to a TCP backend: every address it resolves to now, in turn, each
    through `socket_factory` (where the connect-time check refuses), TLS for https."""
    assert address.host is not None and address.port is not None
    host, port, literal = address.host, address.port, address.ip is not None
    tls = ssl.create_default_context() if address.scheme == "https" else None

    async def connect(protocol: Callable[[], asyncio.Protocol]) -> tuple[asyncio.BaseTransport,
                                                                         asyncio.Protocol]:
        loop = asyncio.get_running_loop()
        errors: list[OSError] = []
        async with asyncio.timeout(connect_timeout_s):
            for info in await _addresses(host, port, literal):
                try:
                    sock = socket_factory(info)
                except OSError as error:
                    errors.append(error)
                    continue
                try:
                    sock.setblocking(False)
                    await loop.sock_connect(sock, info[4])
                    return await loop.create_connection(
                        protocol, sock=sock, ssl=tls, server_hostname=host if tls else None)
                except OSError as error:
                    sock.close()
                    errors.append(error)
                except BaseException:
                    sock.close()
                    raise
        raise _one_error(errors or [OSError(errno.EHOSTUNREACH, f"{host} has no address")])

    return connect


def unix_connect(path: str, connect_timeout_s: float) -> Connect:
    """Open connections to a unix socket."""

    async def connect(protocol: Callable[[], asyncio.Protocol]) -> tuple[asyncio.BaseTransport,
                                                                         asyncio.Protocol]:
        async with asyncio.timeout(connect_timeout_s):
            return await asyncio.get_running_loop().create_unix_connection(protocol, path)

    return connect


def peer_refusal(peer: PeerCredentials | None, proc: Path = Path("/proc")) -> str | None:
    """Why the process the kernel connected us to may not be a local backend (a process of
    mushishi-egress), or None. A socket systemd holds (socket activation) has systemd as its
    peer: the identity check before connect() covers those."""
    if peer is not None and EGRESS_UNIT in (cgroup_parts(peer.pid, proc) or ()):
        return f"is served by {EGRESS_UNIT}, the way to cloud backends"
    return None


def local_unix_connect(path: str, connect_timeout_s: float,
                       forbidden: Sequence[tuple[str, str]], on_refusal: OnRefusal) -> Connect:
    """Open connections to a local unix-socket backend, checked by identity every time:
    the socket file `path` names now must not be one of `forbidden` ((path, why) pairs: the
    egress's socket, the router's own; read at each connection, so pairs added later count),
    and the peer must pass `peer_refusal`. The file is
    opened first (O_PATH) and connected through /proc/self/fd, so the socket compared is
    the socket connected to, whatever happens to the path in between."""

    def refuse(why: str) -> SovereigntyRefusal:
        refusal = SovereigntyRefusal(f"unix:{path}", f"it {why}")
        on_refusal(refusal)
        return refusal

    async def open_checked() -> socket.socket:
        handle = os.open(path, os.O_PATH | os.O_CLOEXEC)
        try:
            found = os.fstat(handle)
            for other, why in forbidden:
                if file_identity(other) == (found.st_dev, found.st_ino):
                    raise refuse(why)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                await asyncio.get_running_loop().sock_connect(sock, f"/proc/self/fd/{handle}")
            except BaseException:
                sock.close()
                raise
        finally:
            os.close(handle)
        why = peer_refusal(peer_credentials(sock))
        if why is not None:
            sock.close()
            raise refuse(why)
        return sock

    async def connect(protocol: Callable[[], asyncio.Protocol]) -> tuple[asyncio.BaseTransport,
                                                                         asyncio.Protocol]:
        async with asyncio.timeout(connect_timeout_s):
            sock = await open_checked()
            try:
                return await asyncio.get_running_loop().create_unix_connection(protocol,
                                                                               sock=sock)
            except BaseException:
                sock.close()
                raise

    return connect


def host_header(address: BackendAddress) -> str:
    """The Host header for a backend: host[:port] (the port only when not the default)."""
    if address.unix_path is not None or address.host is None:
        return "unix"
    host = f"[{address.host}]" if address.ip is not None and address.ip.version == 6 \
        else address.host
    default = 443 if address.scheme == "https" else 80
    return host if address.port == default else f"{host}:{address.port}"


@dataclass(frozen=True, slots=True)
class Target:
    """A GET target: the pool of its origin and the path to ask for."""

    pool: Pool
    path: str


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a hop's requests go: a pool and the path prefix before `/chat/...`."""

    pool: Pool
    prefix: str  # "/v1"
    health: Target | None  # the health probe's GET (local backends)
    models: Target | None  # the model list's GET (local backends)
    via_egress: bool
    props: Target | None = None  # llama-server's GET /props (local backends)


class Upstreams:
    """The pools of every backend and of the egress; close() when done."""

    def __init__(
        self,
        hops: Mapping[str, Hop],
        urls: Mapping[str, str],
        health_urls: Mapping[str, str | None],
        router: RouterSettings,
        *,
        connect_check: bool,
        on_refusal: OnRefusal,
    ) -> None:
        self.connect_check = connect_check
        self._networks = list(router.local_networks)
        self._on_refusal = on_refusal
        self._addresses: dict[str, BackendAddress] = {}  # local TCP backends
        self._endpoints: dict[str, Endpoint] = {}
        self._pools: list[Pool] = []
        timeout = router.connect_timeout_s
        factory = (guarded_socket_factory(list(router.local_networks), on_refusal)
                   if connect_check else plain_socket)
        # Unix sockets have no address for the kernel to filter: their identity check is
        # never turned off.
        self._forbidden = forbidden = [
            (router.egress_socket, EGRESS_SOCKET_REFUSAL),
            *((path, OWN_SOCKET_REFUSAL) for path in unix_listen_paths(router.listen))]

        def pool(address: BackendAddress) -> Pool:
            connect = (local_unix_connect(address.unix_path, timeout, forbidden, on_refusal)
                       if address.unix_path is not None
                       else tcp_connect(address, timeout, factory))
            made = Pool(connect, host_header(address))
            self._pools.append(made)
            return made

        # A new connection per cloud hop (a unix connect costs microseconds): an idle pooled
        # connection closed by a restarting egress would fail a request, while a new one
        # waits in mushishi-egress.socket's backlog for the next instance.
        self.egress = Pool(unix_connect(router.egress_socket, timeout), EGRESS_HOST,
                           keep_alive=False)
        self._pools.append(self.egress)
        for name, hop in hops.items():
            if not hop.local:
                self._endpoints[name] = Endpoint(self.egress, "/v1", None, None, True)
                continue
            address = parse_backend_url(urls[name])
            if address.unix_path is None:
                self._addresses[name] = address
            backend = pool(address)
            # ComfyUI has no /health: /system_stats answers 200 once it serves.
            health = Target(backend, "/system_stats" if hop.kind == "comfyui" else "/health")
            # A unix-socket backend is probed at /health on its own socket.
            configured = health_urls.get(name)
            if address.unix_path is None and configured:
                probed = parse_backend_url(str(configured))
                path = "/health" if probed.unix_path is not None else \
                    urlsplit(str(configured)).path or "/"
                health = Target(pool(probed), path)
            # ComfyUI has no model list and no /props (llama-server's slot count).
            comfy = hop.kind == "comfyui"
            self._endpoints[name] = Endpoint(
                backend, address.base_path, health,
                None if comfy else Target(backend, address.base_path + "/models"), False,
                None if comfy else Target(backend, "/props"))

    def endpoint(self, name: str) -> Endpoint:
        """The endpoint of backend `name`."""
        return self._endpoints[name]

    async def websocket_url(self, name: str, path: str) -> tuple[str, str]:
        """(ws://ADDRESS:PORT`path`, Host header) for local TCP backend `name`: its host
        resolved now and each address passed through the connect-time check, as for its
        pool (a websocket client dials the address itself, never the name)."""
        address = self._addresses[name]
        assert address.host is not None and address.port is not None
        infos = await _addresses(address.host, address.port, address.ip is not None)
        for info in infos:
            host = str(info[4][0])
            if self.connect_check and not address_is_local(host, self._networks):
                refusal = SovereigntyRefusal(host)
                self._on_refusal(refusal)
                raise refusal
        if not infos:
            raise OSError(errno.EHOSTUNREACH, f"{address.host} has no address")
        host = str(infos[0][4][0])
        literal = f"[{host}]" if ":" in host else host
        scheme = "wss" if address.scheme == "https" else "ws"
        return f"{scheme}://{literal}:{address.port}{path}", host_header(address)

    def refuse_own_socket(self, path: str) -> None:
        """A unix socket the router serves on: no unix backend may be it."""
        self._forbidden.append((path, OWN_SOCKET_REFUSAL))

    async def close(self) -> None:
        """Close every connection."""
        for pool in self._pools:
            await pool.close()
