"""serve_until_stopped on a real unix socket: READY after the sockets accept, a request in
flight at stop is answered, then the daemon closes; while it drains, keep-alive connections
are told `Connection: close`, an idle one is closed only after the grace period, and a request
still running at the drain timeout is cut promptly; cancel_and_wait ends tasks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from mushishi.shared import serving as serving_module
from mushishi.shared.activation import bind_unix
from mushishi.shared.notify import Notifier
from mushishi.shared.serving import serve_until_stopped
from mushishi.shared.tasks import cancel_and_wait


class Daemon:
    """The smallest daemon: counts requests in flight and records what happens to it."""

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0
        self.events: list[str] = []

    def status_line(self) -> str:
        return f"{self.in_flight} in flight"

    async def close(self) -> None:
        self.events.append("close")


async def test_serve_until_stopped_drains_the_request_in_flight_then_closes(
        tmp_path: Path) -> None:
    daemon = Daemon()
    entered = asyncio.Event()
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        daemon.in_flight += 1
        entered.set()
        await release.wait()
        daemon.in_flight -= 1
        return web.Response(text=f"draining={daemon.draining}")

    app = web.Application()
    app.router.add_get("/slow", slow)
    path = tmp_path / "api.sock"
    notifier = Notifier({})
    stop = asyncio.Event()
    serving = asyncio.Event()
    task = asyncio.create_task(serve_until_stopped(
        daemon, app, [bind_unix(path)], notifier, stop, drain_s=10.0,
        logger=logging.getLogger("mushishi.test-serving"), serving=serving.set,
        tick=lambda: daemon.events.append("tick"),
        closing=lambda: daemon.events.append("closing")))
    async with asyncio.timeout(30):
        await serving.wait()
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(str(path))) as session:
            request = asyncio.create_task(session.get("http://daemon/slow"))
            await entered.wait()
            stop.set()
            while not daemon.draining:
                await asyncio.sleep(0)
            assert "close" not in daemon.events
            release.set()
            answer = await request
            assert answer.status == 200
            assert await answer.text() == "draining=True"
        await task
    sent = list(notifier.sent)
    assert sent[0] == "READY=1\nSTATUS=0 in flight"
    assert sent[1:3] == ["WATCHDOG=1", "STATUS=0 in flight"]
    assert sent[-1] == "STOPPING=1\nSTATUS=draining 1 request(s), up to 10s"
    assert daemon.events == ["tick", "closing", "close"]


class Served:
    """serve_until_stopped running on a unix socket: /fast answers at once, /slow once
    `release` is set."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.daemon = Daemon()
        self.stop = asyncio.Event()
        self.release = asyncio.Event()
        self.entered = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def fast(self, request: web.Request) -> web.Response:
        return web.Response(text="fast")

    async def slow(self, request: web.Request) -> web.Response:
        self.entered.set()
        await self.release.wait()
        return web.Response(text="slow")

    async def start(self, drain_s: float) -> None:
        app = web.Application()
        app.router.add_get("/fast", self.fast)
        app.router.add_get("/slow", self.slow)
        serving = asyncio.Event()
        self.task = asyncio.create_task(serve_until_stopped(
            self.daemon, app, [bind_unix(self.path)], Notifier({}), self.stop, drain_s=drain_s,
            logger=logging.getLogger("mushishi.test-serving"), serving=serving.set))
        await serving.wait()

    async def draining(self) -> None:
        self.stop.set()
        while not self.daemon.draining:
            await asyncio.sleep(0)


@asynccontextmanager
async def served(path: Path, drain_s: float = 10.0) -> AsyncIterator[Served]:
    server = Served(path)
    await server.start(drain_s)
    try:
        async with asyncio.timeout(30):
            yield server
    finally:
        assert server.task is not None
        server.stop.set()
        server.release.set()
        await server.task


class Connection:
    """One raw keep-alive HTTP/1.1 connection, to see exactly what the server says."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, path: Path) -> Connection:
        return cls(*await asyncio.open_unix_connection(str(path)))

    def send(self, target: str) -> None:
        self.writer.write(f"GET {target} HTTP/1.1\r\nHost: daemon\r\n\r\n".encode())

    async def answer(self) -> tuple[dict[str, str], bytes]:
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode()
        headers = {name.lower(): value.strip() for name, _, value in
                   (line.partition(":") for line in head.split("\r\n")[1:] if line)}
        return headers, await self.reader.readexactly(int(headers["content-length"]))

    async def closed(self, within: float) -> bool:
        """True when the server closes the connection within `within` seconds."""
        try:
            async with asyncio.timeout(within):
                return await self.reader.read(1) == b""
        except TimeoutError:
            return False


async def test_a_keep_alive_connection_is_answered_with_connection_close_while_draining(
        tmp_path: Path) -> None:
    async with served(tmp_path / "api.sock") as server:
        idle = await Connection.open(server.path)
        idle.send("/fast")
        headers, body = await idle.answer()
        assert (body, headers.get("connection")) == (b"fast", None)  # kept alive
        busy = await Connection.open(server.path)
        busy.send("/slow")
        await server.entered.wait()
        await server.draining()
        # The idle connection is still open: a request its client writes now is answered, and
        # the answer says the connection closes.
        idle.send("/fast")
        headers, body = await idle.answer()
        assert (body, headers["connection"]) == (b"fast", "close")
        assert await idle.closed(within=1.0)
        server.release.set()
        headers, body = await busy.answer()
        assert (body, headers["connection"]) == (b"slow", "close")
        assert await busy.closed(within=1.0)
        # No connection left: the daemon stops at once, not after the idle grace period.
        started = time.monotonic()
        assert server.task is not None
        await server.task
        assert time.monotonic() - started < serving_module.IDLE_GRACE_S / 2


async def test_an_idle_keep_alive_connection_is_closed_only_after_the_grace_period(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serving_module, "IDLE_GRACE_S", 0.6)
    async with served(tmp_path / "api.sock") as server:
        idle = await Connection.open(server.path)
        idle.send("/fast")
        await idle.answer()
        started = time.monotonic()
        await server.draining()
        assert not await idle.closed(within=0.3)
        assert await idle.closed(within=2.0)
        assert 0.6 <= time.monotonic() - started < 2.0
        assert server.task is not None
        await server.task
        assert "close" in server.daemon.events


async def test_a_request_still_running_at_the_drain_timeout_is_cut_promptly(
        tmp_path: Path) -> None:
    async with served(tmp_path / "api.sock", drain_s=0.5) as server:
        hung = await Connection.open(server.path)
        hung.send("/slow")
        await server.entered.wait()
        started = time.monotonic()
        await server.draining()
        assert await hung.closed(within=5.0)
        assert server.task is not None
        await server.task
        # drain_s, then at most twice serving.CUT_S for the handler to end once cancelled.
        assert time.monotonic() - started < 0.5 + 2 * serving_module.CUT_S + 0.5


async def test_cancel_and_wait_ends_every_task() -> None:
    forever = [asyncio.create_task(asyncio.Event().wait()) for _ in range(3)]
    await cancel_and_wait(*forever)
    assert all(task.cancelled() for task in forever)


async def test_cancel_and_wait_task_failure_is_raised() -> None:
    async def fails() -> None:
        raise RuntimeError("broken")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)  # let it run and fail before it is cancelled
    with pytest.raises(RuntimeError, match="broken"):
        await cancel_and_wait(task)
