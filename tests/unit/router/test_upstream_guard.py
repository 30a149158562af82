"""The connect-time check: the socket factory sees the resolved address before connect();
a unix backend is compared by identity with the egress's and the router's own sockets."""

from __future__ import annotations

import asyncio
import errno
import socket
from ipaddress import ip_network
from pathlib import Path

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey

from mushishi.services.router.http1 import ConnectFailed, Pool
from mushishi.services.router.upstream import (
    SovereigntyRefusal,
    guarded_socket_factory,
    local_unix_connect,
    peer_refusal,
    refused_by_policy,
    tcp_connect,
)
from mushishi.shared.locality import parse_backend_url
from mushishi.shared.peers import PeerCredentials

NETWORKS = [ip_network("127.0.0.0/8"), ip_network("::1/128"), ip_network("100.64.0.0/10")]


@pytest.mark.parametrize("address", [
    (socket.AF_INET, ("203.0.113.5", 80)),
    (socket.AF_INET, ("10.0.0.1", 80)),
    (socket.AF_INET6, ("::ffff:8.8.8.8", 80, 0, 0)),
    (socket.AF_INET6, ("2001:db8::1", 80, 0, 0)),
])
def test_factory_refuses_non_local_addresses_before_any_socket_exists(
    address: tuple[int, tuple]
) -> None:
    refused: list[SovereigntyRefusal] = []
    factory = guarded_socket_factory(NETWORKS, refused.append)
    family, sockaddr = address
    with pytest.raises(SovereigntyRefusal) as caught:
        factory((family, socket.SOCK_STREAM, 6, "", sockaddr))
    assert caught.value.errno == errno.EPERM
    assert [refusal.address for refusal in refused] == [sockaddr[0]]


@pytest.mark.parametrize("address", [
    (socket.AF_INET, ("127.0.0.1", 80)),
    (socket.AF_INET, ("100.100.0.1", 80)),
    (socket.AF_INET6, ("::1", 80, 0, 0)),
])
def test_factory_creates_sockets_for_local_addresses(address: tuple[int, tuple]) -> None:
    factory = guarded_socket_factory(NETWORKS, lambda host: pytest.fail(f"refused {host}"))
    family, sockaddr = address
    sock = factory((family, socket.SOCK_STREAM, 6, "", sockaddr))
    try:
        assert sock.family == family
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        sock.close()


def test_refusals_are_told_apart_from_ordinary_connection_errors() -> None:
    key = ConnectionKey("h", 80, False, True, None, None, None)
    ours = aiohttp.ClientConnectorError(key, SovereigntyRefusal("203.0.113.5"))
    kernel = aiohttp.ClientConnectorError(key, OSError(errno.EPERM, "Operation not permitted"))
    refused = aiohttp.ClientConnectorError(key, ConnectionRefusedError(errno.ECONNREFUSED, "x"))
    assert refused_by_policy(ours) == "connect-time"
    assert refused_by_policy(kernel) == "kernel"
    assert refused_by_policy(refused) is None


def test_refusals_through_the_routers_own_client_are_told_apart_too() -> None:
    def failed(error: OSError) -> ConnectFailed:
        try:
            raise ConnectFailed(error) from error
        except ConnectFailed as caught:
            return caught

    assert refused_by_policy(failed(SovereigntyRefusal("203.0.113.5"))) == "connect-time"
    assert refused_by_policy(failed(OSError(errno.EPERM, "Operation not permitted"))) == \
        "kernel"
    assert refused_by_policy(failed(ConnectionRefusedError(errno.ECONNREFUSED, "x"))) is None


async def test_a_pool_never_connects_to_an_address_outside_the_local_networks() -> None:
    refused: list[SovereigntyRefusal] = []
    address = parse_backend_url("http://203.0.113.5:8000/v1")
    pool = Pool(tcp_connect(address, 1.0, guarded_socket_factory(NETWORKS, refused.append)),
                "203.0.113.5:8000")
    with pytest.raises(ConnectFailed) as caught:
        await pool.request("POST", "/v1/chat/completions", b"", b"{}")
    assert isinstance(caught.value.os_error, SovereigntyRefusal)
    assert [refusal.address for refusal in refused] == ["203.0.113.5"]


def _listener(path: Path) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(4)
    listener.setblocking(False)
    return listener


@pytest.mark.parametrize("spelling", ["{dir}/link.sock", "{dir}//egress.sock",
                                      "{dir}/./egress.sock", "/proc/self/root{dir}/egress.sock"])
async def test_a_unix_backend_that_is_the_egress_socket_is_refused_before_connect(
        tmp_path: Path, spelling: str) -> None:
    egress = tmp_path / "egress.sock"
    listener = _listener(egress)
    (tmp_path / "link.sock").symlink_to(egress)
    refused: list[SovereigntyRefusal] = []
    path = spelling.format(dir=tmp_path)
    pool = Pool(local_unix_connect(path, 1.0, [(str(egress), "is the egress")],
                                   refused.append), "unix")
    try:
        with pytest.raises(ConnectFailed) as caught:
            await pool.request("GET", "/health", b"")
        assert isinstance(caught.value.os_error, SovereigntyRefusal)
        assert refused_by_policy(caught.value) == "connect-time"
        assert [str(r) for r in refused] == [
            f"[Errno 1] connect-time check refused unix:{path}: it is the egress"]
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever connected
    finally:
        listener.close()
        await pool.close()


async def test_a_unix_backend_that_is_another_socket_connects(tmp_path: Path) -> None:
    backend, egress = tmp_path / "backend.sock", tmp_path / "egress.sock"
    listeners = [_listener(backend), _listener(egress)]
    connect = local_unix_connect(str(backend), 1.0, [(str(egress), "is the egress")],
                                 lambda refusal: pytest.fail(str(refusal)))
    try:
        transport, _ = await connect(asyncio.Protocol)
        transport.close()
        listeners[0].accept()[0].close()
    finally:
        for listener in listeners:
            listener.close()


def test_a_peer_in_the_egress_unit_is_refused(tmp_path: Path) -> None:
    for pid, cgroup in ((41, "/system.slice/mushishi-egress.service"),
                        (42, "/system.slice/mushishi-cpu-floor.service")):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cgroup").write_text(f"0::{cgroup}\n")
    assert "mushishi-egress.service" in (peer_refusal(PeerCredentials(41, 999, 999), tmp_path)
                                         or "")
    assert peer_refusal(PeerCredentials(42, 999, 999), tmp_path) is None
    assert peer_refusal(PeerCredentials(43, 999, 999), tmp_path) is None  # gone or hidden
    assert peer_refusal(None, tmp_path) is None
