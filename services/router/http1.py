"""A small HTTP/1.1 client for the request path: what the router sends to a backend or to the
egress, and the health probes.

One `Pool` per origin keeps idle keep-alive connections; each connection carries one request
at a time. A response's body is framed by `Content-Length`, chunked encoding, or the end of
the connection, and is read whole (`read`) or as it arrives (`read_some`), with reading
paused while too much is buffered. Nothing is followed, retried, decompressed or proxied:
no redirects, no proxy variables, no cookies, no `User-Agent`.

Why not aiohttp's client: on a routed request it cost about as much CPU as the whole rest of
the router's work (benchmarks/router/README.md), and none of its features are wanted here.
Opening a connection is the caller's `Connect` (upstream.py), where the connect-time
sovereignty check lives; this module only speaks the protocol.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

MAX_HEAD_BYTES = 64 * 1024  # status line and headers of one response
MAX_CHUNK_LINE = 4096  # a chunk-size line, extensions included
PAUSE_ABOVE = 1 << 20  # body bytes buffered before reading from the socket pauses
IDLE_S = 15.0  # an idle keep-alive connection older than this is closed, not reused
WRITE_APART = 64 * 1024  # a body this large is written after the head, not copied onto it

Connect = Callable[[Callable[[], asyncio.Protocol]], Awaitable[tuple[asyncio.BaseTransport,
                                                                     asyncio.Protocol]]]


class UpstreamError(Exception):
    """The exchange with an upstream failed."""


class ConnectFailed(UpstreamError):
    """No connection could be opened; `os_error` says why (refused, no route, a sovereignty
    refusal …). Raised `from` that error."""

    def __init__(self, os_error: OSError) -> None:
        super().__init__(str(os_error))
        self.os_error = os_error


class ResponseBroken(UpstreamError):
    """The connection failed, closed or spoke something that is not HTTP/1.1 before the
    answer was complete."""


_LENGTH, _CHUNKED, _UNTIL_CLOSE, _NONE = range(4)
_SIZE, _DATA, _DATA_END, _TRAILERS = range(4)


class Response:
    """One upstream answer: status and headers at once, the body as it arrives."""

    __slots__ = ("_buffered", "_chunks", "_connection", "_error", "_waiter", "complete",
                 "content_type", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str],
                 connection: _Connection | None) -> None:
        self.status = status
        self.headers = headers  # lower-case names; repeated headers joined with ", "
        raw_type = headers.get("content-type", "application/octet-stream")
        self.content_type = raw_type.partition(";")[0].strip().lower()
        self.complete = False  # every body byte has arrived
        self._connection = connection  # None once the connection is no longer ours
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    # -- what the protocol feeds ------------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > PAUSE_ABOVE and self._connection is not None:
            self._connection.pause()
        self._wake()

    def _finish(self) -> None:
        self.complete = True
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if not self.complete:
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        except BaseException:
            self.close()  # cancelled (the caller went away, a timeout): the upstream sees it
            raise
        finally:
            self._waiter = None

    def _take(self) -> bytes:
        data = b"".join(self._chunks) if len(self._chunks) != 1 else self._chunks[0]
        self._chunks.clear()
        self._buffered = 0
        if self._connection is not None:
            self._connection.resume()
        return data

    # -- what the relay calls ---------------------------------------------------------------
    @property
    def buffered(self) -> int:
        """Body bytes that arrived and were not read yet."""
        return self._buffered

    async def read(self) -> bytes:
        """The whole body."""
        while not self.complete:
            if self._error is not None:
                raise self._error
            await self._wait()
        return self._take()

    async def read_some(self) -> bytes:
        """The body bytes that arrived since the last read (waiting for some); b"" at the end."""
        while not self._chunks and not self.complete:
            if self._error is not None:
                raise self._error
            await self._wait()
        return self._take()

    def release(self) -> None:
        """Done with this answer: its connection stays open for the next request when the
        body was complete, else it is closed."""
        if not self.complete:
            self.close()

    def close(self) -> None:
        """Drop the answer and close its connection (the upstream sees the connection end)."""
        connection, self._connection = self._connection, None
        if connection is not None and not self.complete:
            connection.close()


class _Connection(asyncio.Protocol):
    """One keep-alive connection, parsing the answer to the request in flight."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self.reusable = False
        self._paused = False
        self._waiter: asyncio.Future[Response] | None = None  # until status and headers
        self._response: Response | None = None  # while its body arrives
        self._buffer = b""
        self._head_done = True  # no request in flight
        self._framing = _NONE
        self._remaining = 0
        self._chunk_state = _SIZE
        self._keep_alive = True
        self.idle_since = 0.0

    # -- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        try:
            if not self._head_done:
                data = self._parse_head(data)
                if data is None:
                    return
            if self._response is not None:
                self._parse_body(data)
            elif data:
                raise ResponseBroken("the upstream sent bytes nobody asked for")
        except ResponseBroken as error:
            self._broken(error)

    def eof_received(self) -> bool:
        if self._response is not None and self._framing == _UNTIL_CLOSE:
            self._complete()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self._pool.forget(self)
        if self._response is not None and self._framing == _UNTIL_CLOSE and exc is None:
            self._complete()
        error = ResponseBroken("the upstream closed the connection" if exc is None else
                               f"the connection to the upstream failed ({exc})")
        if exc is not None:
            error.__cause__ = exc
        self._broken(error)

    def pause_writing(self) -> None:  # the request is already in memory: nothing to pause
        pass

    def resume_writing(self) -> None:
        pass

    # -- requests ---------------------------------------------------------------------------
    def send(self, head: bytes, body: bytes | None,
             keep_alive: bool) -> asyncio.Future[Response]:
        """Write one request; the future resolves with its answer's status and headers."""
        assert self.transport is not None
        self.reusable = False
        self._keep_alive = keep_alive
        self._head_done = False
        self._buffer = b""
        self._waiter = asyncio.get_running_loop().create_future()
        if body is None:
            self.transport.write(head)
        elif len(body) < WRITE_APART:
            self.transport.write(head + body)
        else:
            self.transport.writelines((head, body))
        return self._waiter

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    # -- parsing ----------------------------------------------------------------------------
    def _parse_head(self, data: bytes) -> bytes | None:
        """Status line and headers; the rest of `data`, or None until they are complete."""
        while True:
            end = data.find(b"\r\n\r\n")
            if end > MAX_HEAD_BYTES or (end < 0 and len(data) > MAX_HEAD_BYTES):
                raise ResponseBroken(f"response headers longer than {MAX_HEAD_BYTES} bytes")
            if end < 0:
                self._buffer = data
                return None
            lines = data[:end].split(b"\r\n")
            data = data[end + 4:]
            status_line = lines[0]
            code = status_line[9:12]
            if not status_line.startswith(b"HTTP/1.") or status_line[8:9] != b" " \
                    or len(code) != 3 or not code.isdigit() \
                    or status_line[12:13] not in (b"", b" "):
                raise ResponseBroken(f"not an HTTP/1.x status line: {status_line[:80]!r}")
            status = int(code)
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, colon, value = line.partition(b":")
                if not colon or not name or name != name.strip() or name[0:1] in b" \t":
                    raise ResponseBroken(f"malformed response header: {line[:80]!r}")
                key = name.decode("latin-1").lower()
                text = value.strip().decode("latin-1")
                headers[key] = f"{headers[key]}, {text}" if key in headers else text
            if 100 <= status < 200:
                continue  # an interim answer (100 Continue, 103 Early Hints): the real one follows
            self._start(status, headers, status_line[7:8] == b"0")
            return data

    def _start(self, status: int, headers: dict[str, str], http10: bool) -> None:
        connection = headers.get("connection", "").lower()
        self._keep_alive = self._keep_alive and ("close" not in connection) and (
            not http10 or "keep-alive" in connection)
        coding = headers.get("transfer-encoding")
        if status in (204, 304):
            self._framing = _NONE
        elif coding is not None:
            if coding.rpartition(",")[2].strip().lower() != "chunked":
                self._framing, self._keep_alive = _UNTIL_CLOSE, False
            else:
                self._framing, self._chunk_state = _CHUNKED, _SIZE
                if "content-length" in headers:  # both: never trust the connection again
                    self._keep_alive = False
        elif "content-length" in headers:
            lengths = {part.strip() for part in headers["content-length"].split(",")}
            if len(lengths) != 1 or not next(iter(lengths)).isdigit():
                raise ResponseBroken(f"bad Content-Length: {headers['content-length']!r}")
            self._framing, self._remaining = _LENGTH, int(lengths.pop())
        else:
            self._framing, self._keep_alive = _UNTIL_CLOSE, False
        self._head_done = True
        response = self._response = Response(status, headers, self)
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(response)
        if self._framing == _NONE or (self._framing == _LENGTH and self._remaining == 0):
            self._complete()

    def _parse_body(self, data: bytes) -> None:
        response = self._response
        assert response is not None
        if self._framing == _LENGTH:
            if len(data) > self._remaining:
                raise ResponseBroken("the upstream sent more than its Content-Length")
            if data:
                self._remaining -= len(data)
                response._feed(data)
            if self._remaining == 0:
                self._complete()
        elif self._framing == _UNTIL_CLOSE:
            if data:
                response._feed(data)
        elif self._framing == _CHUNKED:
            self._parse_chunks(data, response)
        elif data:
            raise ResponseBroken("the upstream sent a body where none belongs")

    def _parse_chunks(self, data: bytes, response: Response) -> None:
        position = 0
        size = len(data)
        while position < size:
            state = self._chunk_state
            if state == _DATA:
                take = min(self._remaining, size - position)
                if take:
                    response._feed(data[position:position + take])
                    position += take
                    self._remaining -= take
                if self._remaining:
                    return
                self._chunk_state = _DATA_END
                continue
            end = data.find(b"\r\n", position)
            if end < 0:
                rest = data[position:]
                if len(rest) > MAX_CHUNK_LINE:
                    raise ResponseBroken("a chunk-size line or trailer is too long")
                self._buffer = rest
                return
            line = data[position:end]
            position = end + 2
            if state == _SIZE:
                text = line.partition(b";")[0].strip()
                try:
                    self._remaining = int(text, 16)
                except ValueError:
                    raise ResponseBroken(f"bad chunk size {text[:20]!r}") from None
                if self._remaining < 0 or text[:1] in (b"+", b"-") or b"_" in text:
                    raise ResponseBroken(f"bad chunk size {text[:20]!r}")
                self._chunk_state = _DATA if self._remaining else _TRAILERS
            elif state == _DATA_END:
                if line:
                    raise ResponseBroken("chunk data longer than its size")
                self._chunk_state = _SIZE
            elif not line:  # _TRAILERS: an empty line ends the body
                self._complete()
                if position < size:
                    raise ResponseBroken("the upstream sent bytes nobody asked for")
                return

    def _complete(self) -> None:
        response, self._response = self._response, None
        self._framing = _NONE
        if response is None:
            return
        self.resume()
        if self._keep_alive and self.transport is not None and not self.transport.is_closing():
            self.reusable = True
            response._connection = None  # the connection is the pool's again
            response._finish()
            self._pool.put_back(self)
        else:
            response._finish()
            response._connection = None
            self.close()

    def _broken(self, error: ResponseBroken) -> None:
        self.reusable = False
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        response, self._response = self._response, None
        if response is not None:
            response._fail(error)
        if self.transport is not None:
            self.transport.close()


class Pool:
    """Requests to one origin: idle keep-alive connections are reused (newest first), a new
    one is opened when none is idle (or, with `keep_alive=False`, for every request)."""

    def __init__(self, connect: Connect, host: str, *, keep_alive: bool = True) -> None:
        self._connect = connect
        self._host = host.encode("idna" if not host.isascii() else "ascii")
        self._keep_alive = keep_alive
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()

    async def request(self, method: str, target: str, headers: bytes,
                      body: bytes | None = None) -> Response:
        """Send one request (`headers`: ready CRLF-terminated lines, no Host or
        Content-Length); its answer once its status and headers have arrived.

        Raises ConnectFailed when no connection opens, ResponseBroken when the answer breaks
        off. A cancelled or timed-out call closes its connection.
        """
        head = b"%s %s HTTP/1.1\r\nHost: %s\r\n%s" % (
            method.encode("ascii"), target.encode("ascii"), self._host, headers)
        if body is not None:
            head += b"Content-Length: %d\r\n" % len(body)
        if not self._keep_alive:
            head += b"Connection: close\r\n"
        head += b"\r\n"
        connection = self._take_idle()
        if connection is None:
            connection = await self._open_connection()
        try:
            return await connection.send(head, body, self._keep_alive)
        except BaseException:
            connection.close()
            raise

    def _take_idle(self) -> _Connection | None:
        if not self._idle:
            return None
        oldest = asyncio.get_running_loop().time() - IDLE_S
        while self._idle:
            connection = self._idle.pop()
            if connection.idle_since < oldest:
                connection.close()
            elif connection.reusable and connection.transport is not None \
                    and not connection.transport.is_closing():
                return connection
        return None

    async def _open_connection(self) -> _Connection:
        try:
            _, protocol = await self._connect(lambda: _Connection(self))
        except OSError as error:
            raise ConnectFailed(error) from error
        connection: Any = protocol
        self._open.add(connection)
        return connection

    def put_back(self, connection: _Connection) -> None:
        """An answer ended and `connection` may carry the next request."""
        connection.idle_since = asyncio.get_running_loop().time()
        self._idle.append(connection)

    def forget(self, connection: _Connection) -> None:
        """`connection` is closed."""
        self._open.discard(connection)
        if connection in self._idle:
            self._idle.remove(connection)

    async def close(self) -> None:
        """Close every connection."""
        for connection in list(self._open):
            connection.close()
        self._idle.clear()
        if self._open:
            await asyncio.sleep(0)  # let the transports call connection_lost
