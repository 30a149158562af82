"""Listener and prober run inside the test network namespaces (`python peers.py ...`).

    peers.py listen tcp:22 udp:41641 ...     serve until killed; prints "ready" once bound
    peers.py probe SECONDS tcp:ADDR:PORT ...  prints {"tcp:ADDR:PORT": true|false, ...}

Listeners bind `::` with IPV6_V6ONLY off, so one socket answers IPv4 and IPv6. A TCP
peer gets "ok\\n" and the connection stays open until the peer closes it (like an SSH
session); a UDP datagram gets "ok\\n" back. A probe counts a target as reachable only if
that answer arrives, so a port served by something else does not count.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys


async def _serve_tcp(port: int) -> asyncio.AbstractServer:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok\n")
        await writer.drain()
        await reader.read()  # hold the connection (an SSH session) until the peer ends it
        writer.close()

    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("::", port))
    return await asyncio.start_server(answer, sock=sock)


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[type-arg]
        self.transport.sendto(b"ok\n", addr)  # type: ignore[attr-defined]


async def listen(specs: list[str]) -> None:
    loop = asyncio.get_running_loop()
    servers = []
    for spec in specs:
        proto, port = spec.split(":")
        if proto == "tcp":
            servers.append(await _serve_tcp(int(port)))
        else:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", int(port)))
            await loop.create_datagram_endpoint(_Echo, sock=sock)
    print("ready", flush=True)
    await asyncio.Event().wait()


async def _probe_tcp(address: str, port: int, timeout: float) -> bool:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(address, port), timeout)
    except (OSError, TimeoutError):
        return False
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
    return line == b"ok\n"


class _Reply(asyncio.DatagramProtocol):
    def __init__(self, done: asyncio.Future[bool]) -> None:
        self.done = done

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[type-arg]
        if not self.done.done():
            self.done.set_result(data == b"ok\n")

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_result(False)


async def _probe_udp(address: str, port: int, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bool] = loop.create_future()
    transport, _ = await loop.create_datagram_endpoint(lambda: _Reply(done),
                                                       remote_addr=(address, port))
    try:
        transport.sendto(b"probe\n")
        return await asyncio.wait_for(done, timeout)
    except (OSError, TimeoutError):
        return False
    finally:
        transport.close()


async def probe(timeout: float, targets: list[str]) -> dict[str, bool]:
    async def one(target: str) -> bool:
        proto, rest = target.split(":", 1)
        address, port = rest.rsplit(":", 1)
        address = address.strip("[]")
        if proto == "tcp":
            return await _probe_tcp(address, int(port), timeout)
        return await _probe_udp(address, int(port), timeout)

    results = await asyncio.gather(*(one(t) for t in targets))
    return dict(zip(targets, results, strict=True))


def main(argv: list[str]) -> int:
    if argv[0] == "listen":
        asyncio.run(listen(argv[1:]))
        return 0
    if argv[0] == "probe":
        print(json.dumps(asyncio.run(probe(float(argv[1]), argv[2:]))))
        return 0
    raise SystemExit(f"unknown command {argv[0]!r}")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
