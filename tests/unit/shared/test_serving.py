"""serve_until_stopped on a real unix socket: READY after the sockets accept, a request in
flight at stop is answered, then the daemon closes; cancel_and_wait ends tasks."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

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
