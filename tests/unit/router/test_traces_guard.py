"""The OTLP exporter's session applies the router's connect-time check: a peer outside
router.local_networks is refused after connect() and before a byte is sent (a listed
hostname may resolve elsewhere after the config check). Real sockets on loopback."""

from __future__ import annotations

import socket
import threading
from ipaddress import IPv4Network

import pytest
import requests

from mushishi.services.router.traces import guarded_session


def listener(host: str) -> tuple[socket.socket, list[bytes]]:
    """A TCP server on `host` that records what each connection sends, answers 200."""
    server = socket.socket()
    server.bind((host, 0))
    server.listen()
    received: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    data = conn.recv(65536)
                except OSError:
                    data = b""
                received.append(data)
                if data:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    return server, received


def test_a_collector_outside_the_local_networks_gets_no_byte() -> None:
    server, received = listener("127.0.0.1")
    port = server.getsockname()[1]
    session = guarded_session([IPv4Network("127.0.0.2/32")])  # 127.0.0.1 is "not local"
    with pytest.raises(requests.ConnectionError, match=r"connect-time check refused 127\.0\.0\.1"):
        session.post(f"http://127.0.0.1:{port}/v1/traces", data=b"span of a T1 request",
                     timeout=5)
    server.close()
    assert all(chunk == b"" for chunk in received), received


def test_a_collector_inside_the_local_networks_is_reached() -> None:
    server, received = listener("127.0.0.2")
    port = server.getsockname()[1]
    session = guarded_session([IPv4Network("127.0.0.2/32")])
    answer = session.post(f"http://127.0.0.2:{port}/v1/traces", data=b"span", timeout=5)
    server.close()
    assert answer.status_code == 200
    assert received and received[0].startswith(b"POST /v1/traces")
    assert session.trust_env is False
