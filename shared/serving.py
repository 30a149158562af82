"""An aiohttp app served on listening sockets under systemd, until a stop request.

READY=1 once every socket accepts; WATCHDOG=1 and a fresh STATUS= line on a ticker; on stop,
STOPPING=1 and a drain that drops nothing, keep-alive clients included:

* the sockets stop accepting first: new connections wait in the listen backlog, which
  systemd keeps open for the next instance;
* every response from then on says `Connection: close` and its connection is closed once it
  is sent, so a client never writes its next request onto a connection about to close;
* requests in flight (streams included) finish;
* an idle connection is closed only once it has been idle for `IDLE_GRACE_S` (its client may
  be writing a request onto it right now: that one is answered, with `Connection: close`);
* when no connection is left, or at the drain timeout, the daemon closes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestHandler

from mushishi.shared.notify import Notifier
from mushishi.shared.tasks import cancel_and_wait

STATUS_EVERY_S = 10.0
# On stop, how long a connection must have been idle before it is closed; within it, its
# client may still send a request (answered, with `Connection: close`). A connection is idle
# from the end of its last request, or from the stop when it carried none since.
IDLE_GRACE_S = 2.0
# After the drain timeout, how long a request still running gets to end once told to stop.
CUT_S = 1.0
POLL_S = 0.05


class Drainable(Protocol):
    """What a served daemon shows and does while it drains."""

    draining: bool
    in_flight: int

    def status_line(self) -> str:
        """The STATUS= line shown by `systemctl status`."""
        ...

    async def close(self) -> None:
        """Release everything once no request is left."""
        ...


async def serve_until_stopped(
    daemon: Drainable,
    app: web.Application,
    sockets: list[socket.socket],
    notifier: Notifier,
    stop: asyncio.Event,
    *,
    drain_s: float,
    logger: logging.Logger,
    serving: Callable[[], None],
    tick: Callable[[], None] | None = None,
    closing: Callable[[], None] | None = None,
) -> None:
    """Serve `app` on `sockets` until `stop` is set, then drain and close `daemon`.

    `serving` runs once every socket accepts (it logs where), `tick` on every ticker round,
    `closing` after the last request and before `daemon.close()`.
    """
    connections = Connections()
    connections.attach(app)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                           shutdown_timeout=CUT_S)
    await runner.setup()
    sites = [web.SockSite(runner, sock, backlog=1024) for sock in sockets]
    for site in sites:
        await site.start()
    serving()
    notifier.ready(daemon.status_line())
    ticker = asyncio.create_task(_tick(daemon, notifier, tick))
    try:
        await stop.wait()
    finally:
        began = time.monotonic()
        deadline = began + drain_s
        daemon.draining = True
        connections.draining = True
        notifier.stopping(f"draining {daemon.in_flight} request(s), up to {drain_s:g}s")
        logger.info("stopping: draining %d request(s) in flight (up to %gs)", daemon.in_flight,
                    drain_s)
        await cancel_and_wait(ticker)
        # Stop accepting first: new connections wait in the listen backlog for the next
        # instance. Then wait for every connection to end (each closes after its next
        # response) or to have been idle past the grace period.
        for site in sites:
            await site.stop()
        assert runner.server is not None
        await connections.settled(runner.server, deadline, min(IDLE_GRACE_S, drain_s))
        if connections.busy:
            logger.warning("drain timeout (%gs) reached with %d connection(s) still carrying a "
                           "request: cutting them", drain_s, connections.busy)
        # Closes the connections left (all idle, unless the drain timed out).
        await runner.cleanup()
        if closing is not None:
            closing()
        await daemon.close()
        logger.info("stopped: drained in %.1fs", time.monotonic() - began)


class Connections:
    """The server's connections as the drain sees them: which carry a request now, and since
    when the others have been idle. An aiohttp middleware and response hook (`attach`)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.draining = False
        self._clock = clock
        self._requests: dict[RequestHandler, int] = {}  # connection -> requests in progress
        self._idle_since: dict[RequestHandler, float] = {}  # filled only while draining

    @property
    def busy(self) -> int:
        """Connections carrying a request now."""
        return len(self._requests)

    def attach(self, app: web.Application) -> None:
        """Count `app`'s requests (outermost middleware); `Connection: close` once draining."""
        app.middlewares.insert(0, self._middleware)
        app.on_response_prepare.append(self._prepare)

    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
        connection = request.protocol
        self._requests[connection] = self._requests.get(connection, 0) + 1
        try:
            return await handler(request)
        finally:
            left = self._requests.pop(connection) - 1
            if left:
                self._requests[connection] = left
            if self.draining:
                self._idle_since[connection] = self._clock()

    async def _prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        if self.draining:
            # Closed once sent; the header is written here because aiohttp (3.14) runs this
            # hook after it has chosen the response's headers.
            response.force_close()
            response.headers[hdrs.CONNECTION] = "close"

    async def settled(self, server: web.Server, deadline: float, grace: float) -> None:
        """Wait until every connection of `server` is closed or has been idle for `grace`
        seconds, or until `deadline` (monotonic). A connection that carried no request since
        the drain began is idle from the first look at it here."""
        while True:
            now = self._clock()
            open_now = server.connections
            self._idle_since = {connection: self._idle_since.get(connection, now)
                                for connection in open_now}
            if now >= deadline or all(
                    connection not in self._requests and now - since >= grace
                    for connection, since in self._idle_since.items()):
                return
            await asyncio.sleep(POLL_S)


async def _tick(daemon: Drainable, notifier: Notifier, tick: Callable[[], None] | None) -> None:
    """WATCHDOG=1 while the loop runs, a fresh STATUS= line, then the daemon's own upkeep."""
    interval = notifier.watchdog_interval()
    period = min(interval, STATUS_EVERY_S) if interval else STATUS_EVERY_S
    while True:
        notifier.watchdog()
        notifier.status(daemon.status_line())
        if tick is not None:
            tick()
        await asyncio.sleep(period)

