"""The router's HTTP/1.1 client against real servers on port 0: framing, keep-alive, streams,
broken answers, limits, cancellation, streamed request bodies. The odd answers come from a
raw TCP server that writes the exact bytes a test gives it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from mushishi.services.router import http1
from mushishi.services.router.http1 import ConnectFailed, Pool, ResponseBroken
from mushishi.services.router.upstream import plain_socket, tcp_connect, unix_connect
from mushishi.shared.locality import parse_backend_url


@contextlib.asynccontextmanager
async def listening(talk: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                   Awaitable[None]]) -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP server on 127.0.0.1 running `talk` for each connection (a reset or an early
    close ends it quietly, and the connection is closed after); yields (port, connections
    seen)."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await talk(reader, writer)
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


@contextlib.asynccontextmanager
async def raw_server(answer: Callable[[bytes], list[bytes]],
                     close_after: bool = False) -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP server answering each request (read up to its blank line and body) with the
    pieces `answer` returns, written one by one; yields (port, connections seen)."""

    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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

    async with listening(talk) as served:
        yield served


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
    b"HTTP/1.1 20 OK\r\n\r\n",
    b"HTTP/1.1200 OK\r\n\r\n",
    b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
    b"HTTP/1.1 200 OK\r\nBroken header\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nab",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab",
    b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    # both framings at once is how responses are smuggled (RFC 9112 6.3)
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3 ;x\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
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


@pytest.mark.parametrize("head", [
    [b"X-Big: " + b"a" * (http1.MAX_HEAD_BYTES + 10) + b"\r\n\r\n"],  # one header
    [b"X-Many: %05d\r\n" % n for n in range(http1.MAX_HEAD_BYTES // 10)] + [b"\r\n"],
    [b"X-Endless: "] + [b"a" * 16384] * 8,  # never ends: refused before it all arrives
])
async def test_a_header_block_over_the_limit_is_refused(head: list[bytes]) -> None:
    pieces = [b"HTTP/1.1 200 OK\r\n" + b"".join(head[:-1]), head[-1],
              b"Content-Length: 2\r\n\r\nok"]
    async with raw_server(lambda _: pieces) as (port, _):
        pool = pool_for(port)
        with pytest.raises(ResponseBroken, match="longer than"):
            await pool.request("POST", "/", HEADERS, b"{}")
        await pool.close()


@pytest.mark.parametrize("framing", [
    [b"0\r\n" + b"".join(b"X-Trailer-%05d: x\r\n" % n for n in range(8000)) + b"\r\n"],
    # arriving in pieces, as an endless one would: refused before it all arrives
    [b"2;", *[b"e" * 16384] * 8, b"\r\nok\r\n0\r\n\r\n"],
])
async def test_trailers_or_a_chunk_line_over_the_limit_break_the_answer(
        framing: list[bytes]) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n"
    async with raw_server(lambda _: [head, *framing]) as (port, _):
        pool = pool_for(port)
        response = await pool.request("POST", "/", HEADERS, b"{}")
        with pytest.raises(ResponseBroken, match="longer than"):
            await response.read()
        await pool.close()


async def test_chunk_extensions_and_trailers_are_read_past_and_kept_out_of_the_headers(
) -> None:
    answers = iter([
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n",
         b"4;name=value;flag\r\nabcd\r\n", b"2;quoted=\"a;b\"\r\nef\r\n",
         b"0;last\r\nX-Sum: 6\r\nX-Other: y\r\n\r\n"],
        [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
    ])
    async with raw_server(lambda _: next(answers)) as (port, connections):
        pool = pool_for(port)
        first = await pool.request("GET", "/", b"")
        assert await first.read() == b"abcdef"
        second = await pool.request("GET", "/", b"")
        assert await second.read() == b"ok"
        await pool.close()
    assert len(connections) == 1
    assert "x-sum" not in first.headers and "x-sum" not in second.headers
    assert set(second.headers) == {"content-length"}


@pytest.mark.parametrize("cut", [
    [b"a\r\nhello"],  # inside a chunk's data
    [b"5\r\nhello\r\n"],  # between chunks, the last one never came
    [],  # before the first chunk-size line: not a body that ends with the connection
])
async def test_a_chunked_answer_cut_off_is_broken_after_what_arrived(cut: list[bytes]) -> None:
    pieces = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", *cut]
    async with raw_server(lambda _: pieces, close_after=True) as (port, _):
        pool = pool_for(port)
        response = await pool.request("GET", "/", b"")
        received = b""
        with pytest.raises(ResponseBroken, match="closed"):
            while chunk := await response.read_some():
                received += chunk
        assert received == (b"hello" if cut else b"")
        await pool.close()


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
])
async def test_an_answer_that_closes_its_connection_is_not_reused(answer: bytes) -> None:
    # The server leaves the connection open: the client must not send on it again.
    async with raw_server(lambda _: [answer]) as (port, connections):
        pool = pool_for(port)
        for _ in range(2):
            assert await (await pool.request("GET", "/", b"")).read() == b"ok"
        await pool.close()
    assert len(connections) == 2


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\nETag: \"x\"\r\n\r\n",
])
async def test_204_and_304_have_no_body_whatever_their_length_says(answer: bytes) -> None:
    answers = iter([[answer], [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]])
    async with raw_server(lambda _: next(answers)) as (port, connections):
        pool = pool_for(port)
        empty = await pool.request("GET", "/", b"")
        assert empty.complete and await empty.read() == b""
        assert await (await pool.request("GET", "/", b"")).read() == b"ok"
        await pool.close()
    assert len(connections) == 1  # the next answer was read on the same connection


async def test_bytes_nobody_asked_for_break_the_connection_not_the_answer() -> None:
    pieces = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
              b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno"]
    async with raw_server(lambda _: pieces) as (port, connections):
        pool = pool_for(port)
        assert await (await pool.request("GET", "/", b"")).read() == b"ok"
        await asyncio.sleep(0.1)  # the unasked answer arrives
        assert await (await pool.request("GET", "/", b"")).read() == b"ok"
        await pool.close()
    assert len(connections) == 2


async def test_a_pooled_connection_the_server_closed_while_idle_is_not_used() -> None:
    # No Connection: close, so the client keeps the connection; the server closes it after
    # one answer, as servers do with idle keep-alive connections.
    answer = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]
    async with raw_server(lambda _: answer, close_after=True) as (port, connections):
        pool = pool_for(port)
        assert await (await pool.request("GET", "/", b"")).read() == b"ok"
        await asyncio.sleep(0.2)  # the server's FIN arrives while the connection is idle
        async with asyncio.timeout(5):
            assert await (await pool.request("GET", "/", b"")).read() == b"ok"
        await pool.close()
    assert len(connections) == 2


async def test_an_origin_that_closes_after_chunked_answers_gets_them_closed_not_pooled(
) -> None:
    # llama-server: keep-alive advertised, yet the connection closed right after every
    # streamed (chunked) answer. Reused before that close is seen, the next request broke
    # before its first byte (ResponseBroken on the third request here, before the fix).
    stream = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nKeep-Alive: timeout=5\r\n"
              b"\r\n", b"5\r\ndata:\r\n0\r\n\r\n"]
    async with raw_server(lambda _: stream, close_after=True) as (port, connections):
        pool = pool_for(port)
        assert await (await pool.request("POST", "/", HEADERS, b"{}")).read() == b"data:"
        await asyncio.sleep(0.2)  # the close after the first stream is seen while idle
        for _ in range(2):  # back to back: each on a connection of its own
            async with asyncio.timeout(5):
                answer = await pool.request("POST", "/", HEADERS, b"{}")
                assert await answer.read() == b"data:"
        await pool.close()
    assert len(connections) == 3


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


@contextlib.asynccontextmanager
async def upload_server(tmp_path: Path, read_delay_s: float = 0.0
                        ) -> AsyncIterator[tuple[Pool, dict[str, object]]]:
    """An aiohttp server on a unix socket that reads each request body piece by piece and
    answers with its size and SHA-256; `seen` says how much arrived so far."""
    seen: dict[str, object] = {"received": 0, "arrived": asyncio.Event()}

    async def upload(request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        seen["received"] = 0
        seen["chunked"] = request.headers.get("Transfer-Encoding") == "chunked"
        seen["length"] = request.headers.get("Content-Length")
        while piece := await request.content.readany():
            digest.update(piece)
            seen["received"] = int(seen["received"]) + len(piece)  # type: ignore[call-overload]
            seen["arrived"].set()  # type: ignore[union-attr]
            if read_delay_s:
                await asyncio.sleep(read_delay_s)
        return web.json_response({"size": seen["received"], "sha256": digest.hexdigest()})

    app = web.Application(client_max_size=1 << 30)
    app.router.add_post("/upload", upload)
    runner = web.AppRunner(app)
    await runner.setup()
    path = str(tmp_path / "upload.sock")
    await web.UnixSite(runner, path).start()
    pool = Pool(unix_connect(path, 2.0), "unix")
    try:
        yield pool, seen
    finally:
        await pool.close()
        await runner.cleanup()


@pytest.mark.parametrize("known_length", [True, False])
async def test_a_streamed_body_is_sent_as_it_comes(tmp_path: Path, known_length: bool) -> None:
    pieces = [b"--boundary\r\n", b"x" * 100_000, b"", b"y" * 3, b"\r\n--boundary--\r\n"]
    async with upload_server(tmp_path) as (pool, seen):
        async def body() -> AsyncIterator[bytes]:
            for piece in pieces:
                yield piece
                if piece:  # the server has it before the next piece exists: nothing waits
                    async with asyncio.timeout(5):  # for the whole body to be sent
                        while int(seen["received"]) < sum(map(len, pieces[:pieces.index(piece) + 1])):  # type: ignore[call-overload]  # noqa: E501
                            arrived: asyncio.Event = seen["arrived"]  # type: ignore[assignment]
                            arrived.clear()
                            await arrived.wait()

        length = sum(map(len, pieces)) if known_length else None
        response = await pool.request("POST", "/upload", b"Content-Type: multipart/form-data\r\n",
                                      body(), length=length)
        answer = await response.read()
        again = await pool.request("POST", "/upload", HEADERS, b"{}")  # the connection is reused
        assert (await again.read()).startswith(b'{"size": 2,')
    whole = b"".join(pieces)
    assert answer == (b'{"size": %d, "sha256": "%s"}'
                      % (len(whole), hashlib.sha256(whole).hexdigest().encode()))
    assert seen["chunked"] is False  # the last request's framing
    assert seen["length"] == "2"


async def test_a_streamed_body_waits_for_a_slow_reader(tmp_path: Path) -> None:
    total, piece = 16 << 20, b"z" * 65536
    lead = 0
    async with upload_server(tmp_path, read_delay_s=0.002) as (pool, seen):
        async def body() -> AsyncIterator[bytes]:
            nonlocal lead
            for sent in range(0, total, len(piece)):
                lead = max(lead, sent - int(seen["received"]))  # type: ignore[call-overload]
                yield piece

        response = await pool.request("POST", "/upload", b"", body())
        assert (await response.read()).startswith(b'{"size": %d,' % total)
        assert seen["chunked"] is True
    # Without waiting on the socket, the whole 16 MiB would be queued ahead of the reader.
    assert lead < 4 << 20


async def test_a_streamed_body_of_the_wrong_length_fails_and_closes_its_connection(
        tmp_path: Path) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"abc"

    async with upload_server(tmp_path) as (pool, _):
        for length in (2, 4):
            with pytest.raises(ValueError, match="3 bytes, not the"):
                await pool.request("POST", "/upload", b"", body(), length=length)
        response = await pool.request("POST", "/upload", b"", body(), length=3)
        assert (await response.read()).startswith(b'{"size": 3,')


async def test_an_answer_before_the_body_is_sent_stops_the_sending() -> None:
    yielded = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal yielded
        while True:
            yielded += 1
            yield b"u" * 1024
            await asyncio.sleep(0.005)

    refusal = [b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\n\r\ntoo long"]
    async with raw_server(lambda _: refusal) as (port, connections):
        pool = pool_for(port)
        async with asyncio.timeout(5):
            response = await pool.request("POST", "/", b"", endless())
        assert (response.status, await response.read()) == (413, b"too long")
        stopped_at = yielded
        response = await pool.request("POST", "/", HEADERS, b"{}")
        assert response.status == 413
        await pool.close()
    assert stopped_at < 100
    assert yielded == stopped_at  # nothing more was asked of the body
    assert len(connections) == 2  # the half-sent request's connection was not reused


@contextlib.asynccontextmanager
async def closes_second_request_unanswered() -> AsyncIterator[tuple[int, list[int]]]:
    """Answers the first request of each connection and closes it on reading the second,
    unanswered: a keep-alive origin that gave up on the connection as it was reused."""

    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")

    async with listening(talk) as served:
        yield served


async def test_a_get_on_a_reused_connection_closed_unanswered_is_sent_again_on_a_new_one(
        ) -> None:
    # The router's prober reported "the upstream closed the connection" for a backend whose
    # kept-alive connection had just been dropped (a restarted stand-in): a GET is safe to
    # send again when nothing of its answer came back.
    async with closes_second_request_unanswered() as (port, connections):
        pool = pool_for(port)
        first = await pool.request("GET", "/health", b"")
        assert await first.read() == b"ok"
        second = await pool.request("GET", "/health", b"")
        assert second.status == 200 and await second.read() == b"ok"
        assert len(connections) == 2


async def test_a_post_on_a_reused_connection_closed_unanswered_is_not_sent_again() -> None:
    async with closes_second_request_unanswered() as (port, connections):
        pool = pool_for(port)
        first = await pool.request("POST", "/v1/chat/completions", b"", b"{}")
        assert await first.read() == b"ok"
        with pytest.raises(ResponseBroken, match="closed the connection"):
            await pool.request("POST", "/v1/chat/completions", b"", b"{}")
        assert len(connections) == 1


async def test_a_closed_pool_opens_no_new_connection() -> None:
    """A request that starts after `close` (a ComfyUI take-back still running when the router
    stops) is refused instead of opening a connection nothing would ever close."""
    def answer(_: bytes) -> list[bytes]:
        return [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]

    async with raw_server(answer) as (port, connections):
        pool = pool_for(port)
        response = await pool.request("GET", "/queue", b"")
        await pool.close()
        assert await response.read() == b"ok"
        response.release()
        with pytest.raises(ConnectFailed, match="closed"):
            await pool.request("GET", "/queue", b"")
        await asyncio.sleep(0.05)
    assert len(connections) == 1
