"""The real egress on its unix socket against stand-in cloud providers: what reaches the cloud,
with which key and body; budgets, cooldowns, Retry-After, 5xx, timeouts and streams."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import generate_latest

from mushishi.services.egress.ledger import read_budgets
from tests.integration.egress.harness import KEYS, running_egress
from tests.standins.cloud import CloudStandin
from tests.standins.openai_server import Fault


def metrics_text(box) -> str:
    return generate_latest(box.egress.registry).decode()


def usage_events(raw: bytes) -> list[dict]:
    events = [json.loads(line[6:]) for line in raw.split(b"\n")
              if line.startswith(b"data: {")]
    return [e for e in events if e.get("usage")]


async def test_chat_reaches_the_provider_with_its_key_the_configured_model_and_nothing_else(
    tmp_path: Path,
) -> None:
    kimi_extra = ('extra_body = { provider = { data_collection = "deny" } }\n'
                  'extra_headers = { "X-Title" = "mushishi" }')
    async with running_egress(tmp_path, kimi_extra=kimi_extra) as box:
        status, answer, _ = await box.post("kimi", {
            "model": "router-sent-this", "chat_template_kwargs": {"thinking": False},
            "provider": {"order": ["x"]}}, headers={"X-Request-Id": "req-1",
                                                     "Authorization": "Bearer sk-caller"})
        assert status == 200, answer
        assert answer["choices"][0]["message"]["content"].startswith("kimi-0")
        [sent] = box.kimi.chat_requests()
        assert sent.headers["Authorization"] == f"Bearer {KEYS['ngc-api-key']}"
        assert sent.headers["X-Title"] == "mushishi"
        assert not [h for h in sent.headers if h.lower().startswith("x-mushishi")
                    or h.lower() == "x-request-id"]
        assert sent.body["model"] == "moonshotai/kimi-k2.6"
        assert sent.body["chat_template_kwargs"] == {"thinking": False}  # passed through
        assert sent.body["provider"] == {"data_collection": "deny"}  # extra_body wins
        assert box.groq.requests == []
        totals = box.egress.ledger.totals("kimi")
        usage = answer["usage"]
        assert (totals.requests, totals.prompt_tokens, totals.completion_tokens) == (
            1, usage["prompt_tokens"], usage["completion_tokens"])
        text = metrics_text(box)
        assert ('mushishi_egress_requests_total{backend="kimi",outcome="success",'
                'profile="personal"} 1.0') in text
        assert f'mushishi_egress_tokens_total{{backend="kimi",kind="completion"}} ' \
               f'{float(usage["completion_tokens"])}' in text


async def test_streamed_usage_is_asked_for_counted_and_hidden_when_not_asked(
    tmp_path: Path,
) -> None:
    async with running_egress(tmp_path) as box:
        status, raw = await box.stream("kimi")
        assert status == 200
        assert raw.endswith(b"data: [DONE]\n\n")
        assert usage_events(raw) == []  # the caller did not ask for it
        sent = box.kimi.chat_requests()[-1].body
        assert sent["stream_options"] == {"include_usage": True}
        first = box.egress.ledger.totals("kimi")
        assert first.requests == 1 and first.completion_tokens == 8 and first.estimated == 0
        status, raw = await box.stream("kimi", {"stream_options": {"include_usage": True}})
        [usage] = usage_events(raw)
        assert usage["usage"]["completion_tokens"] == 8
        second = box.egress.ledger.totals("kimi")
        assert second.requests == 2
        assert second.tokens == first.tokens + usage["usage"]["total_tokens"]


async def test_completions_and_embeddings_are_counted_from_their_usage(tmp_path: Path) -> None:
    async with running_egress(tmp_path) as box:
        status, answer, _ = await box.post("kimi", {"prompt": "def f(", "messages": None},
                                           path="/v1/completions")
        assert status == 200, answer
        status, answer, _ = await box.post("kimi", {"input": ["a", "b"], "messages": None},
                                           path="/v1/embeddings")
        assert status == 200 and len(answer["data"]) == 2
        totals = box.egress.ledger.totals("kimi")
        assert totals.requests == 2 and totals.estimated == 0
        assert [r.path for r in box.kimi.chat_requests()] == ["/v1/completions",
                                                              "/v1/embeddings"]


async def test_429_with_retry_after_cools_the_provider_for_exactly_that_long(
    tmp_path: Path,
) -> None:
    async with running_egress(tmp_path) as box:
        box.kimi.fail_next(CloudStandin.rate_limit("120"))
        status, answer, headers = await box.post("kimi")
        assert (status, answer["error"]["code"]) == (429, "rate_limited")
        assert headers["Retry-After"] == "120"
        status, answer, headers = await box.post("kimi")
        assert (status, answer["error"]["code"]) == (503, "backend_cooling_down")
        assert 118 <= int(headers["Retry-After"]) <= 120
        assert "Retry-After 120s" in answer["error"]["message"]
        assert len(box.kimi.chat_requests()) == 1  # the second never left the box
        assert box.egress.ledger.totals("kimi").requests == 0  # refused: not counted
        status, _, _ = await box.post("groq")  # another provider is not affected
        assert status == 200
        view = read_budgets(box.settings)["kimi"]
        assert view["cooldown_until"] is not None and "Retry-After" in view["cooldown_reason"]
        assert ('mushishi_egress_cooldowns_total{backend="kimi",reason="retry_after"} 1.0'
                in metrics_text(box))


async def test_repeated_5xx_cool_the_provider_and_a_success_resets_the_count(
    tmp_path: Path,
) -> None:
    async with running_egress(tmp_path) as box:  # cooldown_after_failures = 2
        box.kimi.fail_next(Fault.status_code(503, "overloaded"))
        status, answer, _ = await box.post("kimi")
        assert status == 503 and answer["error"]["message"] == "overloaded"
        assert (await box.post("kimi"))[0] == 200  # the count starts again
        box.kimi.fail_next(Fault.status_code(500), Fault.status_code(502, "bad gateway"))
        assert (await box.post("kimi"))[0] == 500
        assert (await box.post("kimi"))[0] == 502
        status, answer, _ = await box.post("kimi")
        assert (status, answer["error"]["code"]) == (503, "backend_cooling_down")
        assert "2 consecutive failures, the last: answered 502 (code 502, type " \
               "stand_in_error, " in answer["error"]["message"]
        assert len(box.kimi.chat_requests()) == 4
        assert box.egress.ledger.totals("kimi").requests == 1  # only the answered one


async def test_a_429_without_retry_after_and_a_bad_key_count_as_failures(
    tmp_path: Path,
) -> None:
    async with running_egress(tmp_path) as box:
        box.kimi.fail_next(CloudStandin.rate_limit(None))
        status, answer, headers = await box.post("kimi")
        assert status == 429 and "Retry-After" not in headers
        box.kimi.key = "rotated-by-the-provider"
        status, answer, _ = await box.post("kimi")
        assert status == 401 and answer["error"]["code"] == "invalid_api_key"
        assert (await box.post("kimi"))[1]["error"]["code"] == "backend_cooling_down"


async def test_a_request_error_is_returned_and_neither_cools_nor_counts(tmp_path: Path) -> None:
    async with running_egress(tmp_path) as box:
        for _ in range(3):
            status, answer, _ = await box.post("kimi", {"messages": [{"content": "no role"}]})
            assert status == 400 and "role" in answer["error"]["message"]
        assert (await box.post("kimi"))[0] == 200
        assert box.egress.ledger.totals("kimi").requests == 1


async def test_a_hung_provider_times_out_with_504_and_the_request_counts_as_estimated(
    tmp_path: Path,
) -> None:
    async with running_egress(tmp_path, kimi_extra="first_byte_timeout_s = 0.3") as box:
        box.kimi.fail_next(Fault.hang())
        status, answer, _ = await box.post("kimi")
        assert (status, answer["error"]["code"]) == (504, "backend_timeout")
        assert "backends.kimi.first_byte_timeout_s" in answer["error"]["message"]
        totals = box.egress.ledger.totals("kimi")
        assert (totals.requests, totals.estimated) == (1, 1)  # it may have been processed


async def test_an_unreachable_provider_is_502_and_not_counted(tmp_path: Path) -> None:
    async with running_egress(tmp_path) as box:
        await box.kimi.refuse()
        status, answer, _ = await box.post("kimi")
        assert (status, answer["error"]["code"]) == (502, "backend_unreachable")
        assert box.egress.ledger.totals("kimi").requests == 0
        assert box.egress.ledger.in_flight("kimi").requests == 0


async def test_requests_budget_is_enforced_per_day_and_skips_the_provider(
    tmp_path: Path,
) -> None:
    async with running_egress(tmp_path, kimi_extra="budget = { requests_per_day = 2 }") as box:
        assert (await box.post("kimi"))[0] == 200
        assert (await box.stream("kimi"))[0] == 200
        status, answer, _ = await box.post("kimi")
        assert (status, answer["error"]["code"]) == (429, "budget_exhausted")
        assert "2 of 2 requests used today (budget.requests_per_day)" in \
            answer["error"]["message"]
        assert len(box.kimi.chat_requests()) == 2
        text = metrics_text(box)
        assert 'mushishi_egress_budget_remaining_requests{backend="kimi"} 0.0' in text
        assert 'mushishi_egress_budget_limit_requests{backend="kimi"} 2.0' in text


async def test_concurrent_requests_never_overshoot_the_requests_budget(tmp_path: Path) -> None:
    async with running_egress(tmp_path, kimi_extra="budget = { requests_per_day = 5 }") as box:
        box.kimi.token_delay = 0.01
        results = await asyncio.gather(*(box.post("kimi") for _ in range(12)))
        statuses = sorted(status for status, _, _ in results)
        assert statuses == [200] * 5 + [429] * 7
        assert len(box.kimi.chat_requests()) == 5


async def test_token_and_cost_budgets_follow_the_providers_usage(tmp_path: Path) -> None:
    extra = ("budget = { tokens_per_day = 30, cost_per_day = 1.0 }\n"
             "price = { prompt_per_million = 10000, completion_per_million = 20000 }")
    async with running_egress(tmp_path, kimi_extra=extra) as box:
        status, answer, _ = await box.post("kimi")
        assert status == 200
        usage = answer["usage"]
        cost = (usage["prompt_tokens"] * 10000 + usage["completion_tokens"] * 20000) / 1e6
        assert box.egress.ledger.totals("kimi").cost == pytest.approx(cost)
        status, answer, _ = await box.post("kimi")  # 20 tokens used < 30: allowed
        assert status == 200
        status, answer, _ = await box.post("kimi")
        assert (status, answer["error"]["code"]) == (429, "budget_exhausted")
        assert "tokens" in answer["error"]["message"]
        view = read_budgets(box.settings)["kimi"]
        assert view["cost_used"] == pytest.approx(2 * cost)
        assert view["tokens_used"] == 40 and view["tokens_limit"] == 30


async def test_a_provider_without_its_key_is_disabled_alone(tmp_path: Path) -> None:
    async with running_egress(tmp_path, credentials=("ngc-api-key",)) as box:
        status, answer, _ = await box.post("groq")
        assert (status, answer["error"]["code"]) == (503, "backend_unavailable")
        assert "credential 'groq-api-key' not found" in answer["error"]["message"]
        assert box.groq.requests == []
        assert 'mushishi_egress_credential_present{backend="groq"} 0.0' in metrics_text(box)
        assert (await box.post("kimi"))[0] == 200


async def test_a_stream_that_dies_mid_way_is_cut_and_counted_from_what_arrived(
    tmp_path: Path,
) -> None:
    async with running_egress(tmp_path) as box:
        box.kimi.fail_next(Fault.die_mid_stream(after_chunks=4))
        with pytest.raises(aiohttp.ClientPayloadError):
            await box.stream("kimi")
        await asyncio.sleep(0.1)
        totals = box.egress.ledger.totals("kimi")
        assert (totals.requests, totals.estimated, totals.completion_tokens) == (1, 1, 4)
        assert box.egress.ledger.in_flight("kimi").requests == 0


async def test_a_router_that_goes_away_mid_stream_still_gets_the_request_counted(
    tmp_path: Path,
) -> None:
    async with running_egress(tmp_path) as box:
        box.kimi.token_delay = 0.05
        box.kimi.tokens = 100
        async with box.session() as session, session.post(
                "http://egress/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "x"}], "stream": True},
                headers={"X-Mushishi-Profile": "personal", "X-Mushishi-Tier": "T2",
                         "X-Mushishi-Backend": "kimi"}) as response:
            for _ in range(5):
                await response.content.readline()
        for _ in range(100):
            if box.egress.ledger.totals("kimi").requests:
                break
            await asyncio.sleep(0.05)
        totals = box.egress.ledger.totals("kimi")
        assert (totals.requests, totals.estimated) == (1, 1)
        assert box.egress.in_flight == 0


async def test_sigterm_drains_a_stream_in_flight_to_its_end(tmp_path: Path) -> None:
    async with running_egress(tmp_path) as box:
        box.kimi.token_delay = 0.05
        box.kimi.tokens = 20
        streaming = asyncio.create_task(box.stream("kimi"))
        while not box.egress.in_flight:
            await asyncio.sleep(0.01)
        box.stop.set()  # what SIGTERM does
        status, raw = await streaming
        assert status == 200 and raw.endswith(b"data: [DONE]\n\n")
        await asyncio.wait_for(box.task, 10)
    view = read_budgets(box.settings)["kimi"]
    assert view["requests_used"] == 1 and view["estimated_requests"] == 0
    assert view["tokens_used"] > 20


async def test_status_shows_budgets_cooldowns_and_credentials(tmp_path: Path) -> None:
    async with running_egress(tmp_path, kimi_extra="budget = { requests_per_day = 9 }") as box:
        await box.post("kimi")
        async with box.session() as session, session.get("http://egress/status") as response:
            status = await response.json()
        kimi = status["backends"]["kimi"]
        assert kimi["requests_used"] == 1 and kimi["requests_limit"] == 9
        assert kimi["credential"] is True and kimi["model"] == "moonshotai/kimi-k2.6"
        assert status["draining"] is False
        assert "kimi 1/9 req" in box.egress.status_line()
