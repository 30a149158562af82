"""peer_uid and request_id_for on a real aiohttp server, over a unix socket and over TCP."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from mushishi.shared.http_request import peer_uid, request_id_for


async def _who(request: web.Request) -> web.Response:
    return web.json_response({"uid": peer_uid(request), "request_id": request_id_for(request)})


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[str, int]]:
    app = web.Application()
    app.router.add_get("/who", _who)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    path = str(tmp_path / "api.sock")
    unix = web.UnixSite(runner, path)
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await unix.start()
    await tcp.start()
    port = tcp._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield path, port
    finally:
        await runner.cleanup()


async def _ask(connector: aiohttp.BaseConnector, url: str,
               headers: dict[str, str] | None = None) -> dict[str, object]:
    async with aiohttp.ClientSession(connector=connector) as session, \
            session.get(url, headers=headers) as answer:
        return await answer.json()


async def test_peer_uid_unix_caller_is_our_uid(server: tuple[str, int]) -> None:
    path, _ = server
    answer = await _ask(aiohttp.UnixConnector(path), "http://api/who")
    assert answer["uid"] == os.getuid()


async def test_peer_uid_tcp_caller_is_none(server: tuple[str, int]) -> None:
    _, port = server
    answer = await _ask(aiohttp.TCPConnector(), f"http://127.0.0.1:{port}/who")
    assert answer["uid"] is None


@pytest.mark.parametrize(("given", "kept"), [
    ("trace-1.2:3_x", True),
    ("a" * 64, True),
    ("a" * 65, False),
    ("has space", False),
    ("new\u00e9", False),
])
async def test_request_id_for_header_is_kept_only_when_plain(
        server: tuple[str, int], given: str, kept: bool) -> None:
    path, _ = server
    answer = await _ask(aiohttp.UnixConnector(path), "http://api/who",
                        {"X-Request-Id": given})
    if kept:
        assert answer["request_id"] == given
    else:
        assert re.fullmatch(r"[0-9a-f]{16}", str(answer["request_id"]))


async def test_request_id_for_missing_header_is_fresh_each_time(
        server: tuple[str, int]) -> None:
    path, _ = server
    first = await _ask(aiohttp.UnixConnector(path), "http://api/who")
    second = await _ask(aiohttp.UnixConnector(path), "http://api/who")
    assert re.fullmatch(r"[0-9a-f]{16}", str(first["request_id"]))
    assert first["request_id"] != second["request_id"]
