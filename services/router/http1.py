"""The router's HTTP/1.1 client: what it sends to a backend or to the egress, and the probes.

One `Pool` per origin keeps idle keep-alive connections; each connection carries one request
at a time. The response is parsed by httptools (Node.js's llhttp, also uvicorn's parser):
the status line, headers, Content-Length, chunked encoding with its extensions and
trailers, and which answers have no body (1xx, 204, 304). This module keeps what a parser
does not do: the pools, the end of a body framed by the connection's end (httptools has no
`finish()`), a cap on the header block (llhttp has none), pausing reads while too much body
is buffered, streaming a request body with the socket's flow control, and closing the
connection when a caller gives up. A body is read whole (`read`) or as it arrives
(`read_some`). An origin that closed a connection right after a chunked answer although it
allowed keep-alive (llama-server does after every stream) gets such connections closed, not
pooled: reused before its close is seen, one would fail the next request before its first
byte. Nothing is followed, retried, decompressed or proxied: no redirects, no proxy
variables, no cookies, no `User-Agent`.

Why its own pools and not aiohttp's client: on a routed request that client cost about as
much CPU as the whole rest of the router's work (benchmarks/router/README.md), and none of
its features are wanted here. Opening a connection is the caller's `Connect` (upstream.py),
where the connect-time sovereignty check lives.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

# The header fields of one answer (trailers included), and the bytes in a row that carry no
# body byte (a header block or a trailer still arriving, a chunk-size line with its
# extensions): llhttp checks their syntax but bounds neither.
MAX_HEAD_BYTES = 64 * 1024
_TOO_LONG = f"response headers, a chunk line or trailers longer than {MAX_HEAD_BYTES} bytes"
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

    # -- what the connection feeds ----------------------------------------------------------
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


_IDEMPOTENT = frozenset(("GET", "HEAD"))


class _Connection(asyncio.Protocol):
    """One keep-alive connection: writes a request, feeds its answer to the parser, whose
    callbacks (the `on_*` methods) build the `Response`."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._parser = HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.reusable = False
        self.idle_since = 0.0
        self._keep_alive = True  # the request allows reusing the connection
        self._last_chunked = False  # the last complete answer was chunked
        self._waiter: asyncio.Future[Response] | None = None  # until status and headers
        self._response: Response | None = None  # while its body arrives
        self._headers: dict[str, str] = {}
        self._head_bytes = 0  # header fields of this answer
        self._bodiless = 0  # bytes received since the last body byte
        self._paused = False
        self._sending = False  # a streamed request body is still being written
        self._writable: asyncio.Future[None] | None = None  # while writing is paused

    # -- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._bodiless += len(data)
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade:
            self._broken(ResponseBroken("the upstream switched to another protocol"))
            return
        except HttpParserError as error:
            cause = error.__context__  # what one of the callbacks below raised
            if cause is not None and not isinstance(cause, ResponseBroken):
                raise cause from None  # a bug here: the loop logs it, closes the connection
            self._broken(cause or ResponseBroken(f"not an HTTP/1.1 answer: {error}"))
            return
        if self._bodiless > MAX_HEAD_BYTES:
            self._broken(ResponseBroken(_TOO_LONG))

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None and self._last_chunked and self._response is None:
            # Closed after a chunked answer while idle, or before the next answer began.
            self._pool.closes_after_chunked = True
        self.reusable = False
        self._pool.forget(self)
        self._wake_writer()
        if exc is None and self._response is not None and self._ends_with_connection():
            self._complete(keep_alive=False)
            return
        error = ResponseBroken("the upstream closed the connection" if exc is None else
                               f"the connection to the upstream failed ({exc})")
        if exc is not None:
            error.__cause__ = exc
        self._broken(error)

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self._wake_writer()

    # -- the parser's callbacks -------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._waiter is None:
            raise ResponseBroken("the upstream sent bytes nobody asked for")
        self._headers = {}
        self._head_bytes = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise ResponseBroken(_TOO_LONG)
        if self._response is not None:
            return  # a trailer: nothing here reads them
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1").strip()
        headers = self._headers
        headers[key] = f"{headers[key]}, {text}" if key in headers else text

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if status < 200:
            return  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        if parser.get_http_version() not in ("1.1", "1.0"):
            raise ResponseBroken(f"not an HTTP/1.x answer (HTTP/{parser.get_http_version()})")
        response = self._response = Response(status, self._headers, self)
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(response)
        self._wake_writer()  # answered before the whole request body was sent: stop sending

    def on_body(self, body: bytes) -> None:
        self._bodiless = 0
        if self._response is not None:
            self._response._feed(body)

    def on_message_complete(self) -> None:
        if self._response is not None:  # else an interim answer ended
            self._complete(self._keep_alive and self._parser.should_keep_alive())

    # -- requests ---------------------------------------------------------------------------
    @property
    def received_any(self) -> bool:
        """Some byte of the answer to the last request sent has arrived."""
        return self._bodiless > 0 or self._response is not None

    def send(self, head: bytes, body: bytes | None,
             keep_alive: bool) -> asyncio.Future[Response]:
        """Write one request; the future resolves with its answer's status and headers."""
        assert self.transport is not None
        self.reusable = False
        self._keep_alive = keep_alive
        self._bodiless = 0
        self._sending = False
        self._waiter = asyncio.get_running_loop().create_future()
        if body is None:
            self.transport.write(head)
        elif len(body) < WRITE_APART:
            self.transport.write(head + body)
        else:
            self.transport.writelines((head, body))
        return self._waiter

    async def send_body(self, body: AsyncIterable[bytes | memoryview], length: int | None,
                        answer: asyncio.Future[Response]) -> None:
        """Write a request body as it comes: as is when `length` is known, else in chunks,
        waiting while the socket's buffer is full. Stops early, leaving the connection
        unusable, once the answer's head arrived or the connection closed."""
        self._sending = True
        sent = 0
        async for piece in body:
            if answer.done() or self.transport is None or self.transport.is_closing():
                return
            if not piece:
                continue  # an empty chunk would end a chunked body
            sent += len(piece)
            if length is None:
                self.transport.writelines((b"%x\r\n" % len(piece), piece, b"\r\n"))
            elif sent > length:
                break
            else:
                self.transport.write(piece)
            if self._writable is not None:
                await self._writable
        if length is not None and sent != length:
            raise ValueError(f"the request body had {sent} bytes, not the {length} its "
                             "Content-Length said")
        if length is None and not answer.done() and not self.transport.is_closing():
            self.transport.write(b"0\r\n\r\n")
        self._sending = False

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

    # -- ends -------------------------------------------------------------------------------
    def _ends_with_connection(self) -> bool:
        """Whether the answer's body ends with the connection: neither a Content-Length nor
        chunked coding (llhttp's rule; httptools cannot be told the connection ended)."""
        coding = self._headers.get("transfer-encoding", "")
        return "content-length" not in self._headers and \
            coding.rpartition(",")[2].strip().lower() != "chunked"

    def _complete(self, keep_alive: bool) -> None:
        response, self._response = self._response, None
        if response is None:
            return
        self.resume()
        response._connection = None  # the connection is no longer the answer's
        response._finish()
        self._last_chunked = self._headers.get("transfer-encoding", "").rpartition(",")[2] \
            .strip().lower() == "chunked"
        if self._last_chunked and self._pool.closes_after_chunked:
            keep_alive = False
        if keep_alive and not self._sending and self.transport is not None \
                and not self.transport.is_closing():
            self.reusable = True
            self._pool.put_back(self)
        else:
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

    def _wake_writer(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)


class Pool:
    """Requests to one origin: idle keep-alive connections are reused (newest first), a new
    one is opened when none is idle (or, with `keep_alive=False`, for every request)."""

    def __init__(self, connect: Connect, host: str, *, keep_alive: bool = True) -> None:
        self._connect = connect
        self._host = host.encode("idna" if not host.isascii() else "ascii")
        self._keep_alive = keep_alive
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        # The origin closed a connection right after a chunked answer: close, never pool them.
        self.closes_after_chunked = False
        self._closed = False  # `close` was called: no connection is opened any more

    async def request(self, method: str, target: str, headers: bytes,
                      body: bytes | AsyncIterable[bytes | memoryview] | None = None, *,
                      length: int | None = None) -> Response:
        """Send one request (`headers`: ready CRLF-terminated lines, no Host,
        Content-Length or Transfer-Encoding); its answer once its status and headers have
        arrived.

        `body` is bytes, or an async iterable of bytes sent as it yields, never held whole:
        with a Content-Length when `length` is given (it must be exact), else chunked. An
        answer that arrives before such a body is sent stops the sending at its next piece.

        Raises ConnectFailed when no connection opens, ResponseBroken when the answer breaks
        off, ValueError when a streamed body's size is not `length`. A cancelled or
        timed-out call closes its connection.
        """
        head = b"%s %s HTTP/1.1\r\nHost: %s\r\n%s" % (
            method.encode("ascii"), target.encode("ascii"), self._host, headers)
        stream: AsyncIterable[bytes | memoryview] | None = None
        if isinstance(body, bytes):
            head += b"Content-Length: %d\r\n" % len(body)
        elif body is not None:
            stream, body = body, None
            head += b"Transfer-Encoding: chunked\r\n" if length is None else \
                b"Content-Length: %d\r\n" % length
        if not self._keep_alive:
            head += b"Connection: close\r\n"
        head += b"\r\n"
        connection = self._take_idle()
        if connection is not None and stream is None and method in _IDEMPOTENT:
            # A kept-alive connection the origin closed as we reused it: nothing of the answer
            # came back, so a GET is sent again on a new connection (what browsers, urllib3
            # and Go do); anything else is for the caller's retry rules to decide.
            answer = connection.send(head, body, self._keep_alive)
            try:
                return await answer
            except ResponseBroken:
                connection.close()
                if connection.received_any:
                    raise
            except BaseException:
                answer.cancel()
                connection.close()
                raise
            connection = None
        if connection is None:
            connection = await self._open_connection()
        answer = connection.send(head, body, self._keep_alive)
        try:
            if stream is not None:
                await connection.send_body(stream, length, answer)
            return await answer
        except BaseException:
            answer.cancel()
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
        if self._closed:
            raise ConnectFailed(ConnectionAbortedError(
                "the router closed its connections to this backend: it is stopping"))
        try:
            _, protocol = await self._connect(lambda: _Connection(self))
        except OSError as error:
            raise ConnectFailed(error) from error
        connection: Any = protocol
        self._open.add(connection)
        return connection

    def put_back(self, connection: _Connection) -> None:
        """An answer ended and `connection` may carry the next request."""
        if self._closed:
            connection.close()
            return
        connection.idle_since = asyncio.get_running_loop().time()
        self._idle.append(connection)

    def forget(self, connection: _Connection) -> None:
        """`connection` is closed."""
        self._open.discard(connection)
        if connection in self._idle:
            self._idle.remove(connection)

    async def close(self) -> None:
        """Close every connection; later requests are refused (ConnectFailed)."""
        self._closed = True
        for connection in list(self._open):
            connection.close()
        self._idle.clear()
        if self._open:
            await asyncio.sleep(0)  # let the transports call connection_lost
