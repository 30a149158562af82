"""An aiohttp app served on listening sockets under systemd, until a stop request.

READY=1 once every socket accepts; WATCHDOG=1 and a fresh STATUS= line on a ticker; on stop,
STOPPING=1 and a drain: the sockets stop accepting first (new connections wait in the listen
backlog, which systemd keeps open for the next instance), then requests in flight get up to
the drain timeout, then the daemon closes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Protocol

from aiohttp import web

from mushishi.shared.notify import Notifier
from mushishi.shared.tasks import cancel_and_wait

STATUS_EVERY_S = 10.0
DRAIN_GRACE_S = 0.5


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
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                           shutdown_timeout=drain_s)
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
        daemon.draining = True
        notifier.stopping(f"draining {daemon.in_flight} request(s), up to {drain_s:g}s")
        logger.info("stopping: draining %d request(s) in flight (up to %gs)", daemon.in_flight,
                    drain_s)
        await cancel_and_wait(ticker)
        # Stop accepting first: new connections wait in the listen backlog. Connections
        # accepted a moment ago may not have sent their request yet; give them a grace period
        # to start one, so that closing idle connections does not reset them.
        for site in sites:
            await site.stop()
        await asyncio.sleep(min(DRAIN_GRACE_S, drain_s))
        await runner.cleanup()
        if closing is not None:
            closing()
        await daemon.close()
        logger.info("stopped")


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

