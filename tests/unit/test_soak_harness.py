"""The chaos soak's own parts (benchmarks/soak), so that a failure it reports is the
product's: the relay drops exactly what it is told to, the counting cloud stand-in counts
what it answered and flags T1 work, the clients classify outcomes, and the verdict fails
on each broken invariant."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from aiohttp import web

from benchmarks.soak import report
from benchmarks.soak.clients import Outcome, coded, error_code
from benchmarks.soak.faults import Injected
from benchmarks.soak.standins import T1_MARKER, CountingCloud, DropProxy, Fault


async def test_the_relay_resets_only_the_requests_it_was_told_to() -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/x", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    proxy = await DropProxy(0, port).start()
    relay = proxy.port
    proxy.drop_next(1)
    try:
        async with aiohttp.ClientSession() as session:
            failed = 0
            for _ in range(3):
                try:
                    async with session.post(f"http://127.0.0.1:{relay}/x") as response:
                        assert (await response.json()) == {"ok": True}
                except aiohttp.ClientError:
                    failed += 1
        assert (failed, proxy.dropped, proxy.pending) == (1, 1, 0)
        # The upstream stops listening: one reset, then refused, then relayed again.
        await site.stop()
        async with aiohttp.ClientSession() as session:
            errors = []
            for _ in range(2):
                try:
                    async with session.post(f"http://127.0.0.1:{relay}/x"):
                        pass
                except aiohttp.ClientError as error:
                    errors.append(error)
                await asyncio.sleep(0.05)
            assert isinstance(getattr(errors[-1], "os_error", None), ConnectionRefusedError)
            site = web.TCPSite(runner, "127.0.0.1", port)
            await site.start()
            await asyncio.sleep(0.5)
            async with session.post(f"http://127.0.0.1:{relay}/x") as response:
                assert (await response.json()) == {"ok": True}
        assert proxy.refused["ConnectionRefusedError"] >= 1
    finally:
        await proxy.stop()
        await runner.cleanup()


async def test_the_cloud_stand_in_counts_answers_not_refusals_and_sees_t1_markers() -> None:
    cloud = await CountingCloud("m", "k", port=0).start()
    cloud.fail_next(Fault.status_code(503))
    try:
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer k"}) as session:
            for content in ("soak-T2-1", "soak-T2-2", f"{T1_MARKER}3"):
                async with session.post(f"{cloud.url}/chat/completions", json={
                        "model": "m", "messages": [{"role": "user", "content": content}]}) as r:
                    await r.read()
        assert (cloud.refused, cloud.answered) == (1, 2)
        assert cloud.answered_tokens > 2 * cloud.tokens_per_answer
        assert len(cloud.sovereign) == 1 and f"{T1_MARKER}3" in cloud.sovereign[0]
    finally:
        await cloud.stop()


def test_outcomes_are_stable_codes_only_for_the_documented_availability_codes() -> None:
    assert error_code({"error": {"code": "all_backends_failed"}}) == "all_backends_failed"
    assert error_code({"type": "error", "error": {"type": "api_error",
                                                  "code": "backend_failed"}}) == "backend_failed"
    assert coded("sovereign_backends_unavailable", 503) == "code:sovereign_backends_unavailable"
    assert coded("invalid_request", 400).startswith("fail:")
    assert coded(None, 502).startswith("fail:")


def verdict(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "outcomes": [Outcome("openai", "private", "ok", 200, 1.0, 0.5)],
        "faults": [Injected("router_restart", 0.5, 2.0, "")],
        "rss": {"start": {"r": (1, 1000)}, "end": {"r": (2, 1050)}},
        "ledger": {"requests_used": 3, "tokens_used": 30, "requests_in_flight": 0,
                   "estimated_requests": 0},
        "provider": {"answered": 3, "tokens": 30, "refused": 0, "t1_seen": []},
        "dropped": 0, "bound_s": 60.0, "elapsed_s": 10.0, "settings": {}}
    base.update(changes)
    return report.build(**base)


def test_the_verdict_fails_on_each_broken_invariant() -> None:
    assert verdict()["passed"]
    broken = [
        verdict(outcomes=[Outcome("aiohttp", "personal",
                                  "fail:connection_error:ServerDisconnectedError", None, 1, 1)]),
        verdict(outcomes=[Outcome("openai", "private", "ok", 200, 1.0, 61.0)]),
        verdict(provider={"answered": 3, "tokens": 30, "refused": 0, "t1_seen": ["x"]}),
        verdict(provider={"answered": 2, "tokens": 30, "refused": 0, "t1_seen": []}),
        verdict(rss={"start": {"r": (1, 1000)}, "end": {"r": (1, 1200)}}),
        verdict(faults=[]),
    ]
    assert [result["passed"] for result in broken] == [False] * len(broken)
    failed = broken[0]
    assert failed["failure_list"][0]["faults"] == ["router_restart@0s"]
    assert "**NO**" in report.markdown({**failed, "settings": {
        "seed": 1, "concurrency": 1, "clients": ["openai"], "profiles": {"private": "T1"},
        "fault_interval_s": [1, 2]}})
    json.dumps(failed)  # the JSON file


def test_the_progress_line_counts_what_ended_so_far_and_what_the_verdict_would_call_lost() -> None:
    outcomes = [Outcome("openai", "private", "ok", 200, 1.0, 0.5),
                Outcome("aiohttp", "personal", "code:all_backends_failed", 503, 2.0, 0.1),
                Outcome("anthropic", "burst", "fail:timeout", None, 3.0, 90.0),
                Outcome("openai", "private", "ok", 200, 4.0, 61.0)]
    faults = [Injected("router_restart", 1.0, 2.0, "")]
    assert report.progress(outcomes, faults, 125.0, 2280.0, 60.0) == (
        "soak: 2 of 38 min, 4 requests (1 ok, 1 stable codes, 2 lost), 1 faults")
