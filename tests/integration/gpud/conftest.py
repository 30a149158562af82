"""A real dbus-daemon on a temporary socket, and the HTTP stand-ins started on port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp import web

from tests.standins.bus import PrivateBus


@pytest.fixture
def private_bus() -> Iterator[str]:
    """The address of a dbus-daemon of this test's own."""
    with PrivateBus() as bus:
        yield bus.address


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    """Start `app` on 127.0.0.1, port 0; (runner, base URL)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def started() -> AsyncIterator[list[web.AppRunner]]:
    """Runners to clean up after the test."""
    runners: list[web.AppRunner] = []
    yield runners
    for runner in runners:
        await runner.cleanup()
