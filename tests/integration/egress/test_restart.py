"""Budget accounting across real restarts of the egress process, SQLite on disk: a clean stop,
and SIGKILL in the middle of a streamed response. No double counting, nothing lost."""

from __future__ import annotations

import asyncio
import json
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mushishi.services.egress.ledger import read_budgets
from mushishi.shared.config import load_config
from tests.integration.egress.harness import (
    CHAT,
    HEADERS_T2,
    EgressProcess,
    config_text,
    running_egress,
    start_providers,
    write_credentials,
)
from tests.standins.cloud import CloudStandin


async def post(egress: EgressProcess, body: dict) -> dict | None:
    """One request; the usage the caller saw (None: a stream without include_usage)."""
    async with egress.session() as session, session.post(
            "http://egress/v1/chat/completions", json={**CHAT, **body},
            headers={**HEADERS_T2, "X-Mushishi-Backend": "kimi"}) as response:
        assert response.status == 200, await response.text()
        if body.get("stream"):
            events = [json.loads(line[6:]) async for line in response.content
                      if line.startswith(b"data: {")]
            found = [e["usage"] for e in events if e.get("usage")]
            return found[0] if found else None
        return (await response.json())["usage"]


async def test_sigkill_mid_stream_counts_the_cut_request_once_and_loses_nothing(
    tmp_path: Path, providers: tuple[CloudStandin, CloudStandin],
) -> None:
    kimi, groq = providers
    config = tmp_path / "mushishi.toml"
    config.write_text(config_text(tmp_path, kimi_port=kimi.port, groq_port=groq.port))
    settings = load_config(config).settings
    egress = EgressProcess(config, {"kimi.test": kimi.host, "groq.test": groq.host},
                           write_credentials(tmp_path / "credentials"), tmp_path / "egress.log")
    try:
        await egress.start()
        exact = [await post(egress, {}),
                 await post(egress, {"stream": True, "stream_options": {"include_usage": True}})]
        exact_tokens = sum(u["total_tokens"] for u in exact if u)

        kimi.token_delay, kimi.tokens = 0.05, 400  # a 20 s stream
        began = asyncio.get_running_loop().time()
        async with egress.session() as session, session.post(
                "http://egress/v1/chat/completions", json={**CHAT, "stream": True},
                headers={**HEADERS_T2, "X-Mushishi-Backend": "kimi"}) as response:
            received = 0
            while received < 30:  # 1.5 s: the egress checkpointed the stream at least once
                line = await response.content.readline()
                received += line.startswith(b"data: {")
            streamed_for = asyncio.get_running_loop().time() - began
            assert egress.kill(signal.SIGKILL) == -signal.SIGKILL

        dead = read_budgets(settings)["kimi"]  # read-only, with no daemon running
        assert dead["requests_used"] == 3 and dead["requests_in_flight"] == 1
        assert dead["tokens_used"] == exact_tokens

        kimi.token_delay, kimi.tokens = 0.0, 8
        await egress.start()  # settles the dead process's reservation, once
        after = read_budgets(settings)["kimi"]
        assert after["requests_used"] == 3 and after["requests_in_flight"] == 0
        assert after["estimated_requests"] == 1
        cut = after["tokens_used"] - exact_tokens
        prompt_estimate = len(json.dumps(CHAT["messages"]).encode()) // 4
        # The prompt's estimate, plus the chunks checkpointed before the kill (about once a
        # second): at least one checkpoint, never more chunks than the provider could send.
        most = int(streamed_for / 0.05) + 2
        assert prompt_estimate + 1 <= cut <= prompt_estimate + most, (cut, streamed_for)
        assert "was in flight when mushishi-egress stopped without settling it" in \
            egress.log.read_text()

        assert await post(egress, {"stream": True}) is None  # usage counted, not shown
        assert egress.kill(signal.SIGTERM) == 0  # a clean stop settles and flushes
        await egress.start()
        final = read_budgets(settings)["kimi"]
        assert final["requests_used"] == 4 and final["estimated_requests"] == 1
        sent = kimi.chat_requests()[-1].body
        streamed_tokens = 8 + max(1, len(json.dumps(sent["messages"])) // 4)
        assert final["tokens_used"] == exact_tokens + cut + streamed_tokens
        egress.stop()
        await egress.start()  # restarting again never counts anything twice
        assert read_budgets(settings)["kimi"] == final
    finally:
        egress.stop()


async def test_a_clean_restart_keeps_the_days_budget_and_a_retry_after(tmp_path: Path) -> None:
    now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    clock = {"now": now}
    kimi, groq = await start_providers()
    try:
        extra = "budget = { requests_per_day = 3 }"
        async with running_egress(tmp_path, kimi=kimi, groq=groq, clock=lambda: clock["now"],
                                  kimi_extra=extra) as box:
            assert (await box.post("kimi"))[0] == 200
            assert (await box.post("kimi"))[0] == 200
            groq.fail_next(CloudStandin.rate_limit("600"))
            assert (await box.post("groq"))[0] == 429
        async with running_egress(tmp_path, kimi=kimi, groq=groq,
                                  clock=lambda: clock["now"]) as box:
            assert box.egress.ledger.totals("kimi").requests == 2
            assert (await box.post("kimi"))[0] == 200
            status, answer, _ = await box.post("kimi")
            assert (status, answer["error"]["code"]) == (429, "budget_exhausted")
            status, answer, _ = await box.post("groq")
            assert (status, answer["error"]["code"]) == (503, "backend_cooling_down")
            assert len(groq.chat_requests()) == 1
        clock["now"] = now + timedelta(days=1)  # the next UTC day: budgets start again
        async with running_egress(tmp_path, kimi=kimi, groq=groq,
                                  clock=lambda: clock["now"]) as box:
            assert (await box.post("kimi"))[0] == 200
            assert (await box.post("groq"))[0] == 200  # the Retry-After has passed
            view = read_budgets(box.settings, clock["now"])
            assert view["kimi"]["requests_used"] == 1
            assert read_budgets(box.settings, now)["kimi"]["requests_used"] == 3
    finally:
        await kimi.stop()
        await groq.stop()
