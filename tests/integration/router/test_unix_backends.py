"""A local unix-socket backend is checked by what it is at every connection, not by how its
path is spelled: a path that turns into the egress's socket, or the router's own, after the
config was checked is refused at connect, and no T1 prompt reaches either (issue 13, hole 4)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.integration.router.harness import PERSONAL_KEY, Box, running_box, wait_for
from tests.standins.llamacpp import LlamaCppStandin

PROMPT = "a T1-strict secret for the unix backend"


@pytest.fixture
async def linked(tmp_path: Path) -> AsyncIterator[tuple[Box, Path]]:
    """The router with backend `cpu` at unix:LINK, LINK a symlink to a real llama.cpp
    stand-in that closes every connection (so each request connects anew)."""
    real = await LlamaCppStandin("cpu-alias", name="unix-cpu", close_connections=True,
                                 unix_path=str(tmp_path / "real-cpu.sock")).start()
    link = tmp_path / "cpu.sock"
    link.symlink_to(tmp_path / "real-cpu.sock")
    try:
        async with running_box(tmp_path, cpu_url=f"unix:{link}") as box:
            yield box, link
    finally:
        await real.stop()


def repoint(link: Path, target: str) -> None:
    link.unlink()
    link.symlink_to(target)


async def ask_strictcpu(box: Box) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session, session.post(
            box.base_url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {PERSONAL_KEY}"},
            json={"model": "strictcpu", "messages": [{"role": "user", "content": PROMPT}]},
    ) as response:
        return response.status, json.loads(await response.read())


def refused(box: Box) -> bool:
    return "sovereignty check" in box.router.state.verdict("cpu").reason


async def test_a_unix_backend_that_becomes_the_egress_socket_is_refused_at_connect(
        linked: tuple[Box, Path]) -> None:
    box, link = linked
    repoint(link, box.egress.unix_path or "")
    status, body = await ask_strictcpu(box)
    chats = [r for r in box.egress.requests if r.path.startswith("/v1/chat")]
    assert chats == [], "a T1-strict prompt was delivered into the egress"
    assert status in (502, 503), body
    await wait_for(lambda: refused(box), what="the probe refused at connect", within=5)


async def test_a_unix_backend_that_becomes_the_routers_own_socket_is_refused_at_connect(
        linked: tuple[Box, Path]) -> None:
    box, link = linked
    repoint(link, box.unix_socket)
    status, body = await ask_strictcpu(box)
    assert status in (502, 503), body
    assert "answered" not in body["error"]["message"], body  # the router never answered itself
    await wait_for(lambda: refused(box), what="the probe refused at connect", within=5)
