"""The router's HTTP/1.1 client against real servers on port 0: framing, keep-alive, streams,
broken answers, cancellation. The odd answers come from a raw TCP server that writes the
exact bytes a test gives it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web

from mushishi.services.router import http1
from mushishi.services.router.http1 import ConnectFailed, Pool, ResponseBroken
from mushishi.services.router.upstream import plain_socket, tcp_connect, unix_connect
from mushishi.shared.locality import parse_backend_url


@contextlib.asynccontextmanager
async def raw_server(answer: Callable[[bytes], list[bytes]],
                     close_after: bool = False) -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP server answering each request (read up to its blank line and body) with the
    pieces `answer` returns, written one by one; yields (port, connections seen)."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                for piece in answer(head + body):
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.01)
                if close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], connections
    finally:
        server.close()
        await server.wait_closed()


def pool_for(port: int, **kwargs: bool) -> Pool:
    address = parse_backend_url(f"http://127.0.0.1:{port}/v1")
    return Pool(tcp_connect(address, 2.0, plain_socket), f"127.0.0.1:{port}", **kwargs)


HEADERS = b"Content-Type: application/json\r\n"


async def test_whole_answers_reuse_one_keep_alive_connection() -> None:
    seen: list[bytes] = []

    def answer(request: bytes) -> list[bytes]:
        seen.append(request)
        return [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n"
                b"\r\n{\"a\":1}"]

    async with raw_server(answer) as (port, connections):
        pool = pool_for(port)
        for _ in range(3):
            response = await pool.request("POST", "/v1/chat/completions", HEADERS, b"{}")
            assert (response.status, response.content_type) == (200, "application/json")
            assert await response.read() == b'{"a":1}'
            response.release()
        await pool.close()
    assert len(connections) == 1
    assert seen[0] == (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                       b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}" % port)


async def test_chunked_answer_arrives_piece_by_piece_and_ends() -> None:
    pieces = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream"
              b"; charset=utf-8\r\n\r\n", b"7\r\ndata: ", b"a\r\n", b"3;ext=1\r\nxyz\r\n",
              b"0\r\nTrailer: x\r\n\r\n"]
    async with raw_server(lambda _: pieces) as (port, connections):
        pool = pool_for(port)
        response = await pool.request("POST", "/v1/x", HEADERS, b"{}")
        assert response.content_type == "text/event-stream"
        received = []
        while chunk := await response.read_some():
            received.append(chunk)
        assert b"".join(received) == b"data: axyz"
        assert len(received) >= 2  # not buffered until the end
        again = await pool.request("POST", "/v1/x", HEADERS, b"{}")
        assert await again.read() == b"data: axyz"
        await pool.close()
    assert len(connections) == 1


async def test_answer_until_close_and_connection_close_are_not_reused() -> None:
    answers = iter([[b"HTTP/1.1 200 OK\r\n\r\nuntil-", b"close"],
                    [b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"]])
    async with raw_server(lambda _: next(answers), close_after=True) as (port, connections):
        pool = pool_for(port)
        assert await (await pool.request("GET", "/", b"")).read() == b"until-close"
        assert await (await pool.request("GET", "/", b"")).read() == b"ok"
        await pool.close()
    assert len(connections) == 2


async def test_interim_answers_are_skipped_and_empty_bodies_end_at_once() -> None:
    async with raw_server(lambda _: [b"HTTP/1.1 100 Continue\r\n\r\n",
                                     b"HTTP/1.1 204 No Content\r\n\r\n"]) as (port, _):
        pool = pool_for(port)
        response = await pool.request("POST", "/", HEADERS, b"{}")
        assert response.status == 204 and response.complete
        assert await response.read() == b""
        await pool.close()


@pytest.mark.parametrize("answer", [
    b"SSH-2.0-OpenSSH\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBroken header\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nab",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
])
async def test_what_is_not_http_is_a_broken_response(answer: bytes) -> None:
    async with raw_server(lambda _: [answer]) as (port, _):
        pool = pool_for(port)
        with pytest.raises(ResponseBroken):
            response = await pool.request("POST", "/", HEADERS, b"{}")
            await response.read()
        await pool.close()


async def test_an_answer_cut_short_is_broken_after_what_arrived() -> None:
    async with raw_server(lambda _: [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"],
                          close_after=True) as (port, _):
        pool = pool_for(port)
        response = await pool.request("POST", "/", HEADERS, b"{}")
        assert await response.read_some() == b"abc"
        with pytest.raises(ResponseBroken):
            await response.read_some()
        await pool.close()


async def test_huge_headers_are_refused() -> None:
    long = b"X-Big: " + b"a" * (http1.MAX_HEAD_BYTES + 10) + b"\r\n"
    async with raw_server(lambda _: [b"HTTP/1.1 200 OK\r\n" + long + b"\r\n"]) as (port, _):
        pool = pool_for(port)
        with pytest.raises(ResponseBroken, match="longer than"):
            await pool.request("POST", "/", HEADERS, b"{}")
        await pool.close()


async def test_refused_connection_is_connect_failed_carrying_the_os_error() -> None:
    async with raw_server(lambda _: []) as (port, _):
        pass  # the port is closed again
    pool = pool_for(port)
    with pytest.raises(ConnectFailed) as caught:
        await pool.request("POST", "/", HEADERS, b"{}")
    assert isinstance(caught.value.os_error, ConnectionRefusedError)


async def test_cancelling_a_request_closes_its_connection() -> None:
    closed = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        try:
            await asyncio.sleep(60)
        finally:
            closed.set()
        return web.Response()

    app = web.Application()
    app.router.add_post("/hang", hang)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        pool = pool_for(port)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await pool.request("POST", "/hang", HEADERS, b"{}")
        async with asyncio.timeout(5):
            await closed.wait()  # the server saw the connection go
        await pool.close()
    finally:
        await runner.cleanup()


async def test_a_slow_reader_pauses_the_socket_and_still_gets_every_byte(
        tmp_path: Path) -> None:
    total = 8 * http1.PAUSE_ABOVE

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(total // 65536):
            await response.write(b"x" * 65536)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/big", big)
    runner = web.AppRunner(app)
    await runner.setup()
    path = str(tmp_path / "big.sock")
    site = web.UnixSite(runner, path)
    await site.start()
    try:
        pool = Pool(unix_connect(path, 2.0), "unix")
        response = await pool.request("GET", "/big", b"")
        await asyncio.sleep(0.3)  # the answer piles up unread
        assert response.buffered <= http1.PAUSE_ABOVE + 2 * 65536 * 4
        received = 0
        while chunk := await response.read_some():
            received += len(chunk)
        assert received == total
        await pool.close()
    finally:
        await runner.cleanup()
