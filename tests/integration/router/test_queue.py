"""Concurrency caps, overflow, the bounded FIFO per backend, and the T1 queue."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.integration.router.harness import Box, post_chat, running_box, wait_for
from tests.standins.openai_server import Fault


async def one_in_the_t1_queue(box: Box) -> asyncio.Task[tuple[int, dict[str, str], dict]]:
    """Both local backends refuse; one private request then waits in the T1 queue."""
    await box.gpu.refuse()
    await box.cpu.refuse()
    waiting = asyncio.create_task(post_chat(box, "private"))
    await wait_for(lambda: box.router.state.t1_queued("private") == 1,
                   what="request in the T1 queue")
    return waiting



async def test_requests_beyond_max_concurrency_overflow_to_the_next_hop(box: Box) -> None:
    box.gpu.token_delay = 0.05  # each answer takes 0.4 s: three overlap
    results = await asyncio.gather(*(post_chat(box, "personal") for _ in range(3)))
    backends = sorted(headers["X-Mushishi-Backend"] for _, headers, _ in results)
    assert backends == ["cpu", "gpu", "gpu"]
    assert box.router.state.slots("gpu").in_flight == 0


async def test_t1_strict_waits_in_the_backend_fifo_and_refuses_when_it_is_full(
    tmp_path: Path,
) -> None:
    async with running_box(tmp_path, cpu_extra="max_concurrency = 1\nqueue_max = 1",
                           strict_extra="queue_timeout_s = 5") as box:
        box.cpu.token_delay = 0.05
        first = asyncio.create_task(post_chat(box, "strictcpu"))
        await wait_for(lambda: box.router.state.slots("cpu").in_flight == 1,
                       what="first request in flight")
        second = asyncio.create_task(post_chat(box, "strictcpu"))
        await wait_for(lambda: box.router.state.slots("cpu").queued == 1,
                       what="second request queued")
        status, headers, body = await post_chat(box, "strictcpu")
        assert (status, body["error"]["code"]) == (503, "backend_failed")
        assert "full queue" in body["error"]["message"]
        assert headers["X-Mushishi-Tier"] == "T1-strict"
        assert [r[0] for r in await asyncio.gather(first, second)] == [200, 200]


async def test_t1_request_waits_for_a_local_backend_to_come_back(tmp_path: Path) -> None:
    async with running_box(tmp_path, private_extra="queue_timeout_s = 10") as box:
        waiting = await one_in_the_t1_queue(box)
        started = time.monotonic()
        await box.cpu.accept()
        status, headers, _ = await waiting
        assert (status, headers["X-Mushishi-Backend"]) == (200, "cpu")
        assert time.monotonic() - started < 5
        assert box.router.state.t1_queued("private") == 0
        assert box.egress.requests == []


async def test_full_t1_queue_answers_503_at_once(tmp_path: Path) -> None:
    async with running_box(tmp_path, private_extra="queue_timeout_s = 10\nqueue_max = 1") as box:
        waiting = await one_in_the_t1_queue(box)
        started = time.monotonic()
        status, _, body = await post_chat(box, "private")
        assert time.monotonic() - started < 1
        assert (status, body["error"]["code"]) == (503, "sovereign_backends_unavailable")
        assert "queue is full" in body["error"]["message"]
        waiting.cancel()


async def test_t1_queue_times_out_with_sovereign_backends_unavailable(box: Box) -> None:
    await box.gpu.refuse()
    await box.cpu.refuse()
    started = time.monotonic()
    status, headers, body = await post_chat(box, "private")  # queue_timeout_s = 1
    elapsed = time.monotonic() - started
    assert (status, body["error"]["code"]) == (503, "sovereign_backends_unavailable")
    assert "after waiting 1s" in body["error"]["message"]
    assert 0.9 <= elapsed < 5
    assert headers["X-Mushishi-Backend"] == "none"
    assert box.egress.requests == []


async def test_loading_model_is_starting_not_down_and_t1_waits_for_it(tmp_path: Path) -> None:
    async with running_box(tmp_path, private_extra="queue_timeout_s = 10") as box:
        await box.gpu.refuse()
        box.cpu.set_loading(True)
        await wait_for(lambda: box.router.state.health("cpu").value == "starting",
                       what="cpu starting")
        assert box.router.status()["backends"]["cpu"]["reason"] == "loading model"
        waiting = asyncio.create_task(post_chat(box, "private"))
        await wait_for(lambda: box.router.state.t1_queued("private") == 1, what="queued")
        box.cpu.set_loading(False)
        status, headers, _ = await waiting
        assert (status, headers["X-Mushishi-Backend"]) == (200, "cpu")


COOLING = Fault.status_code(503, "provider cooling down", code="backend_cooling_down")


async def overflowing_t2(box: Box) -> asyncio.Task[tuple[int, dict[str, str], dict]]:
    """cpu down, every cloud hop cooling down, gpu's one slot taken by a slow request."""
    await box.cpu.refuse()
    await wait_for(lambda: box.router.state.health("cpu").value == "down", what="cpu down")
    box.egress.fail_always(COOLING)
    box.gpu.token_delay = 0.1  # the first answer takes about 0.8 s
    first = asyncio.create_task(post_chat(box, "personal"))
    await wait_for(lambda: box.router.state.slots("gpu").in_flight == 1, what="gpu busy")
    return first


async def test_a_t2_request_whose_cloud_hops_failed_waits_for_the_local_slot(
    tmp_path: Path,
) -> None:
    # The soak's 3,116 T2 requests that ended all_backends_failed in milliseconds: the local
    # hop was busy, so they overflowed to a provider the egress was cooling down.
    async with running_box(tmp_path, gpu_extra="max_concurrency = 1") as box:
        first = await overflowing_t2(box)
        started = time.monotonic()
        status, headers, body = await post_chat(box, "personal")
        assert (status, headers["X-Mushishi-Backend"]) == (200, "gpu"), body
        assert time.monotonic() - started < 5
        assert [r.headers["X-Mushishi-Backend"] for r in box.egress.requests] == [
            "kimi", "groq"]  # overflowed, both failed, then waited for gpu's slot
        assert (await first)[0] == 200
        assert box.router.state.slots("gpu").in_flight == 0


async def test_the_wait_for_the_local_slot_is_bounded_by_the_queue_timeout(
    tmp_path: Path,
) -> None:
    async with running_box(tmp_path, gpu_extra="max_concurrency = 1",
                           personal_extra="queue_timeout_s = 0.3") as box:
        first = await overflowing_t2(box)
        box.gpu.token_delay = 0.5  # the first answer takes 4 s
        started = time.monotonic()
        status, _, body = await post_chat(box, "personal")
        elapsed = time.monotonic() - started
        assert (status, body["error"]["code"]) == (502, "all_backends_failed"), body
        assert "gpu: no free slot in time" in body["error"]["message"]
        assert "kimi: answered 503" in body["error"]["message"]
        assert 0.25 <= elapsed < 2
        first.cancel()
