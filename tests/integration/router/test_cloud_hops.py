"""The T2/T3 cloud chain end to end: router -> real mushishi-egress -> stand-in providers.

The router walks the chain and sends each cloud hop to the egress with X-Mushishi-Backend;
the egress answers for that one provider, or says why not (budget_exhausted, a cooldown, the
provider's error), and the router moves on. The stand-in providers are the cloud canaries.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from mushishi.services.egress.ledger import read_budgets
from tests.integration.egress.harness import KEYS
from tests.integration.router.harness import PERSONAL_KEY, Box, running_box
from tests.standins.cloud import CloudStandin
from tests.standins.openai_server import Fault

AUTH = {"Authorization": f"Bearer {PERSONAL_KEY}"}


@pytest.fixture
async def cloud_box(tmp_path: Path) -> AsyncIterator[Box]:
    """Local gpu and cpu failing, so personal's chain reaches kimi, then groq."""
    async with running_box(tmp_path, real_egress=True,
                           kimi_extra="budget = { requests_per_day = 2 }") as box:
        box.gpu.fail_always(Fault.status_code(500))
        box.cpu.fail_always(Fault.status_code(500))
        yield box


async def post(box: Box, model: str, **body: object) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.post(
        box.base_url + "/v1/chat/completions", headers=AUTH,
        json={"model": model, "messages": [{"role": "user", "content": f"{model} question"}],
              **body},
    ) as response:
        return response.status, dict(response.headers), await response.read()


async def test_a_t2_request_reaches_the_provider_through_the_egress_with_the_egress_key(
    cloud_box: Box,
) -> None:
    box = cloud_box
    status, headers, raw = await post(box, "personal")
    assert (status, headers["X-Mushishi-Backend"]) == (200, "kimi"), raw
    assert headers["X-Mushishi-Fallbacks"] == "2"
    [sent] = box.cloud["kimi"].chat_requests()
    assert sent.headers["Authorization"] == f"Bearer {KEYS['ngc-api-key']}"
    assert PERSONAL_KEY not in json.dumps(sent.headers)
    assert sent.body["model"] == "moonshotai/kimi-k2.6"
    assert box.egress_daemon is not None
    assert box.egress_daemon.ledger.totals("kimi").requests == 1


async def test_the_chain_moves_on_when_a_budget_is_spent_and_ends_budget_exhausted(
    cloud_box: Box,
) -> None:
    box = cloud_box
    for _ in range(2):
        assert (await post(box, "personal"))[1]["X-Mushishi-Backend"] == "kimi"
    status, headers, _ = await post(box, "personal")  # kimi's 2 requests are spent
    assert (status, headers["X-Mushishi-Backend"]) == (200, "groq")
    assert len(box.cloud["kimi"].chat_requests()) == 2
    box.cloud["groq"].fail_always(CloudStandin.rate_limit("300"))
    status, _, raw = await post(box, "personal")
    assert status == 502 and json.loads(raw)["error"]["code"] == "all_backends_failed"
    assert "groq: answered 429" in json.loads(raw)["error"]["message"]
    assert box.egress_daemon is not None
    view = read_budgets(box.egress_daemon.settings)
    assert view["kimi"]["requests_used"] == 2 and view["groq"]["requests_used"] == 1
    assert view["groq"]["cooldown_until"] is not None


async def test_a_chain_whose_only_cloud_hop_is_spent_answers_budget_exhausted(
    tmp_path: Path,
) -> None:
    async with running_box(tmp_path, real_egress=True,
                           kimi_extra="budget = { requests_per_day = 0 }") as box:
        await box.gpu.refuse()
        await box.cpu.refuse()
        status, headers, _ = await post(box, "personal")  # kimi spent; groq unlimited
        assert (status, headers["X-Mushishi-Backend"]) == (200, "groq")
        status, _, raw = await post(box, "cloudy")  # T3: kimi (spent), then cpu (down)
        error = json.loads(raw)["error"]
        assert (status, error["code"]) == (429, "budget_exhausted"), error
        assert box.cloud["kimi"].chat_requests() == []


async def test_a_provider_cooling_down_is_skipped_without_reaching_it(cloud_box: Box) -> None:
    box = cloud_box
    box.cloud["kimi"].fail_next(CloudStandin.rate_limit("600"))
    status, headers, _ = await post(box, "personal")
    assert (status, headers["X-Mushishi-Backend"]) == (200, "groq")
    status, headers, _ = await post(box, "personal")
    assert (status, headers["X-Mushishi-Backend"]) == (200, "groq")
    assert len(box.cloud["kimi"].chat_requests()) == 1  # the 429, then never again


async def test_a_streamed_cloud_answer_is_relayed_and_counted_from_its_usage(
    cloud_box: Box,
) -> None:
    box = cloud_box
    status, headers, raw = await post(box, "personal", stream=True)
    assert (status, headers["X-Mushishi-Backend"]) == (200, "kimi")
    assert raw.rstrip().endswith(b"data: [DONE]")
    assert b'"usage"' not in raw  # not asked for: the egress asked for it and kept it
    assert box.cloud["kimi"].chat_requests()[0].body["stream_options"] == {
        "include_usage": True}
    assert box.egress_daemon is not None
    totals = box.egress_daemon.ledger.totals("kimi")
    assert totals.requests == 1 and totals.completion_tokens == 8 and totals.estimated == 0


async def test_a_cloud_stream_that_dies_mid_way_ends_with_an_error_event(
    cloud_box: Box,
) -> None:
    box = cloud_box
    box.cloud["kimi"].fail_next(Fault.die_mid_stream(after_chunks=3))
    status, headers, raw = await post(box, "personal", stream=True)
    assert (status, headers["X-Mushishi-Backend"]) == (200, "kimi")
    assert b"[DONE]" not in raw and b"backend_failed" in raw
    assert b"groq-" not in raw  # nothing spliced in from the next provider
    assert box.cloud["groq"].chat_requests() == []


async def test_t1_work_never_reaches_a_provider_even_with_every_local_hop_failing(
    cloud_box: Box,
) -> None:
    box = cloud_box
    for profile in ("private", "strictcpu"):
        status, _, _ = await post(box, profile, fallbacks=["kimi"])
        assert status in (502, 503)
    assert box.cloud["kimi"].requests == [] and box.cloud["groq"].requests == []
    assert box.egress_daemon is not None
    assert box.egress_daemon.in_flight == 0
