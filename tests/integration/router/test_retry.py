"""A failed hop is not a lost hop: a local hop that failed before its first byte is tried
again for the same request once the prober judges it healthy, and no request waits in the T1
queue while a hop it may use has a free slot (issue 14, item 1)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from tests.integration.router.harness import (
    PERSONAL_KEY,
    Box,
    post_chat,
    running_box,
    wait_for,
)
from tests.standins.openai_server import Fault

AUTH = {"Authorization": f"Bearer {PERSONAL_KEY}"}


async def test_t1_request_whose_only_up_backend_drops_one_connection_is_answered_at_once(
    tmp_path: Path,
) -> None:
    # Written first and seen failing on main: the request waited the whole queue_timeout_s
    # (10 s here) in the T1 queue for another local backend while cpu answered everyone else.
    async with running_box(tmp_path, private_extra="queue_timeout_s = 10") as box:
        await box.gpu.refuse()  # the GPU backend is away: cpu is the only local one up
        box.cpu.fail_next(Fault.close())  # drop one connection before the first byte
        started = time.monotonic()
        status, headers, _ = await post_chat(box, "private")
        elapsed = time.monotonic() - started
        assert (status, headers["X-Mushishi-Backend"]) == (200, "cpu")
        assert elapsed < 2, f"answered after {elapsed:.1f}s"
        assert box.router.state.t1_queued("private") == 0
        assert box.egress.requests == []
        assert len(box.cpu.chat_requests()) == 2  # the dropped attempt and the retry


async def test_t2_retries_a_local_hop_once_before_falling_to_the_cloud(box: Box) -> None:
    await box.gpu.refuse()
    box.cpu.fail_next(Fault.close())
    status, headers, _ = await post_chat(box, "personal")
    assert (status, headers["X-Mushishi-Backend"]) == (200, "cpu")
    assert headers["X-Mushishi-Retries"] == "1"
    assert box.egress.requests == []


async def test_t2_falls_to_the_cloud_when_the_local_hop_keeps_dropping(box: Box) -> None:
    await box.gpu.refuse()
    box.cpu.fail_always(Fault.close())
    started = time.monotonic()
    status, headers, _ = await post_chat(box, "personal")
    assert status == 200 and headers["X-Mushishi-Backend"] != "cpu"
    assert time.monotonic() - started < 3
    assert len(box.cpu.chat_requests()) == 2  # one retry, no more


async def test_a_stream_broken_after_its_first_byte_is_never_retried(box: Box) -> None:
    await box.gpu.refuse()
    box.cpu.fail_next(Fault.die_mid_stream(after_chunks=2))
    async with aiohttp.ClientSession() as session, session.post(
        box.base_url + "/v1/chat/completions", headers=AUTH,
        json={"model": "private", "stream": True,
              "messages": [{"role": "user", "content": "hi"}]},
    ) as response:
        body = await response.read()
    assert response.status == 200 and b"[DONE]" not in body
    assert len(box.cpu.chat_requests()) == 1  # never tried again, never spliced


async def test_t1_request_queued_behind_a_full_backend_is_woken_by_the_freed_slot(
    tmp_path: Path,
) -> None:
    # cpu takes one request and queues none: the second waits in the T1 queue, and must be
    # served when the first ends, not after queue_timeout_s (nothing else changes meanwhile).
    async with running_box(tmp_path, cpu_extra="max_concurrency = 1\nqueue_max = 0",
                           private_extra="queue_timeout_s = 10") as box:
        await box.gpu.refuse()
        box.cpu.token_delay = 0.1  # each answer takes 0.8 s
        first = asyncio.create_task(post_chat(box, "private"))
        await wait_for(lambda: box.router.state.slots("cpu").in_flight == 1, what="in flight")
        started = time.monotonic()
        second = asyncio.create_task(post_chat(box, "private"))
        await wait_for(lambda: box.router.state.t1_queued("private") == 1, what="queued")
        assert [r[0] for r in await asyncio.gather(first, second)] == [200, 200]
        assert time.monotonic() - started < 3
