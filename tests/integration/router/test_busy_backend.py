"""Health is not starved by load: a backend whose /health stalls while it keeps answering
requests in flight is busy, not down; one that stalls and answers nothing is down (issue 14,
item 3)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from tests.integration.router.harness import PERSONAL_KEY, running_box, wait_for


async def stream(base_url: str) -> bytes:
    async with aiohttp.ClientSession() as session, session.post(
        base_url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {PERSONAL_KEY}"},
        json={"model": "strictcpu", "stream": True,
              "messages": [{"role": "user", "content": "hi"}]},
    ) as response:
        assert response.status == 200
        return await response.read()


async def test_busy_backend_whose_health_stalls_stays_up_and_a_silent_one_goes_down(
    tmp_path: Path,
) -> None:
    # probe_timeout_s = 0.5 and probe_interval_s = 0.2 (harness): several probes time out.
    async with running_box(tmp_path, router_extra="stream_idle_timeout_s = 5") as box:
        box.cpu.tokens, box.cpu.token_delay = 12, 0.25  # a 3 s stream, a byte every 0.25 s
        answering = asyncio.create_task(stream(box.base_url))
        await wait_for(lambda: box.router.state.slots("cpu").in_flight == 1, what="in flight")
        box.cpu.health_stalls = True
        seen: set[str] = set()
        while not answering.done():
            seen.add(box.router.state.health("cpu").value)
            await asyncio.sleep(0.05)
        assert b"[DONE]" in await answering
        assert seen == {"up"}, seen
        assert box.router.status()["backends"]["cpu"]["reason"].startswith("busy: /health")
        # Nothing in flight and /health unanswered: hung, down.
        await wait_for(lambda: box.router.state.health("cpu").value == "down",
                       what="silent cpu down", within=15)
        assert "(hung?)" in box.router.status()["backends"]["cpu"]["reason"]
