"""Backends are protected, not overrun: with no `max_concurrency` configured, a llama-server's
slot count (`/props` `total_slots`) becomes its limit; excess requests wait in the router (T1)
or overflow to the next hop (T2) instead of piling into the server (issue 14, item 2)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.router.harness import Box, post_chat, running_box, wait_for
from tests.llama import LlamaServer, running_llama


async def peak_in_flight(box: Box, backend: str, work: asyncio.Future) -> int:
    peak = 0
    while not work.done():
        peak = max(peak, box.router.state.slots(backend).in_flight)
        await asyncio.sleep(0.005)
    return peak


async def test_t1_excess_waits_in_the_router_within_the_learned_slots(tmp_path: Path) -> None:
    async with running_box(tmp_path, cpu_slots=2, private_extra="queue_timeout_s = 10") as box:
        await box.gpu.refuse()
        assert box.router.state.slots("cpu").limit == 2
        assert box.router.status()["backends"]["cpu"]["max_concurrency"] == 2
        box.cpu.token_delay = 0.05
        work = asyncio.gather(*(post_chat(box, "private") for _ in range(6)))
        peak = await peak_in_flight(box, "cpu", work)
        assert [status for status, _, _ in await work] == [200] * 6
        assert peak == 2
        assert len(box.cpu.chat_requests()) == 6


async def test_t2_excess_overflows_to_the_next_hop(tmp_path: Path) -> None:
    async with running_box(tmp_path, cpu_slots=1) as box:
        await box.gpu.refuse()
        box.cpu.token_delay = 0.05
        results = await asyncio.gather(*(post_chat(box, "personal") for _ in range(3)))
        backends = sorted(headers["X-Mushishi-Backend"] for _, headers, _ in results)
        assert backends == ["cpu", "kimi", "kimi"]


async def test_configured_max_concurrency_wins_over_the_slots(tmp_path: Path) -> None:
    async with running_box(tmp_path, cpu_slots=2, cpu_extra="max_concurrency = 5") as box:
        assert box.router.state.slots("cpu").limit == 5


async def test_no_props_leaves_the_backend_unlimited(box: Box) -> None:
    assert box.router.state.slots("cpu").limit is None  # the stand-in serves no /props


@pytest.fixture(scope="module")
def two_slot_llama(llama_server_binary: Path, tiny_model: Path) -> Iterator[LlamaServer]:
    with running_llama(llama_server_binary, tiny_model, "cpu-alias", "--parallel", "2"
                       ) as server:
        yield server


async def test_real_llama_server_slots_become_the_limit(tmp_path: Path,
                                                        two_slot_llama: LlamaServer) -> None:
    async with running_box(tmp_path, cpu_url=two_slot_llama.url,
                           private_extra="queue_timeout_s = 60") as box:
        await box.gpu.refuse()
        await wait_for(lambda: box.router.state.slots("cpu").limit == 2,
                       what="slots learned from /props")
        work = asyncio.gather(*(post_chat(box, "private") for _ in range(5)))
        peak = await peak_in_flight(box, "cpu", work)
        assert [status for status, _, _ in await work] == [200] * 5
        assert peak == 2
