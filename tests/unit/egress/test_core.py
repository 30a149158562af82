"""The egress's pure decisions: admission, budgets, cooldowns, usage, request preparation."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mushishi.services.egress.core import (
    Breaker,
    DayTotals,
    InFlight,
    Limits,
    Price,
    Refusal,
    Refused,
    SseSplitter,
    StreamTally,
    Usage,
    admit,
    budget_refusal,
    compile_policy,
    cost_of,
    parse_retry_after,
    prepare_body,
    read_event,
    usage_from,
    utc_day,
)
from mushishi.shared.config import load_config

NOW = datetime(2026, 11, 28, 23, 59, 30, tzinfo=UTC)

CONFIG = """
[router]
local_hosts = ["llm.internal"]

[backends.gpu]
url = "http://127.0.0.1:8000/v1"
model = "gpu-model"

[backends.tailnet]
url = "http://100.64.0.7:8000/v1"
model = "t"

[backends.llm]
url = "http://llm.internal:8001/v1"
model = "l"

[backends.kimi]
url = "https://integrate.api.nvidia.com/v1"
model = "moonshotai/kimi-k2.6"
api_key_credential = "ngc-api-key"
budget = { requests_per_day = 10, tokens_per_day = 1000, cost_per_day = 0.5 }
price = { prompt_per_million = 0.6, completion_per_million = 2.5 }
cooldown_after_failures = 5
first_byte_timeout_s = 45
extra_body = { provider = { data_collection = "deny" } }
extra_headers = { "X-Title" = "mushishi" }

[backends.groq]
url = "https://api.groq.com/openai/v1"
model = "groq-model"
api_key_credential = "groq-api-key"
stream_usage = false

[profiles.personal]
tier = "T2"
chain = ["gpu", "kimi"]

[profiles.private]
tier = "T1"
chain = ["gpu", "llm"]

[profiles.client]
tier = "T1-strict"
chain = ["gpu"]

[profiles.cloudy]
tier = "T3"
chain = ["groq", "gpu"]

[egress]
cooldown_s = 42
"""


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory):
    path = Path(tmp_path_factory.mktemp("cfg")) / "mushishi.toml"
    path.write_text(CONFIG)
    return compile_policy(load_config(path).settings)


def test_policy_sorts_backends_by_address_and_reads_per_provider_settings(policy) -> None:
    assert set(policy.cloud) == {"kimi", "groq"}
    assert set(policy.local) == {"gpu", "tailnet", "llm"}
    kimi = policy.cloud["kimi"]
    assert kimi.base == "https://integrate.api.nvidia.com:443/v1"
    assert kimi.limits == Limits(10, 1000, 0.5)
    assert kimi.price == Price(0.6, 2.5)
    assert (kimi.cooldown_after_failures, kimi.cooldown_s) == (5, 42)
    assert kimi.first_byte_timeout_s == 45
    groq = policy.cloud["groq"]
    assert (groq.cooldown_after_failures, groq.first_byte_timeout_s) == (3, 300)
    assert groq.limits == Limits() and groq.price is None and not groq.stream_usage


@pytest.mark.parametrize(("profile", "tier", "backend", "reason"), [
    ("private", "T1", "kimi", Refusal.SOVEREIGN_TIER),
    ("private", "T2", "kimi", Refusal.SOVEREIGN_TIER),  # the router lied about the tier
    ("client", "T1-strict", "kimi", Refusal.SOVEREIGN_TIER),
    ("client", "T3", "groq", Refusal.SOVEREIGN_TIER),
    ("personal", "T3", "kimi", Refusal.TIER_MISMATCH),
    ("personal", "T2", "gpu", Refusal.NOT_CLOUD),
    ("personal", "T2", "tailnet", Refusal.NOT_CLOUD),
    ("personal", "T2", "llm", Refusal.NOT_CLOUD),
    ("personal", "T2", "openai", Refusal.UNKNOWN_BACKEND),
    ("personal", "T2", "groq", Refusal.NOT_IN_CHAIN),
    ("cloudy", "T3", "kimi", Refusal.NOT_IN_CHAIN),
    ("nobody", "T2", "kimi", Refusal.UNKNOWN_PROFILE),
    (None, "T2", "kimi", Refusal.MISSING_HEADERS),
    ("personal", None, "kimi", Refusal.MISSING_HEADERS),
    ("personal", "T2", "", Refusal.MISSING_HEADERS),
])
def test_admit_refuses_what_the_config_forbids_whatever_the_headers_say(
    policy, profile, tier, backend, reason,
) -> None:
    verdict = admit(policy, profile, tier, backend)
    assert isinstance(verdict, Refused)
    assert verdict.reason is reason, verdict.message


def test_admit_accepts_a_t2_or_t3_profile_for_a_cloud_backend_of_its_chain(policy) -> None:
    verdict = admit(policy, "personal", "T2", "kimi")
    assert not isinstance(verdict, Refused)
    assert (verdict.profile, verdict.tier, verdict.backend.name) == ("personal", "T2", "kimi")
    assert not isinstance(admit(policy, "cloudy", "T3", "groq"), Refused)


@pytest.mark.parametrize(("limits", "used", "flight", "refused"), [
    (Limits(), DayTotals(10**9, 10**9, 10**9, 10.0**9), InFlight(100, 10**6), None),
    (Limits(requests=10), DayTotals(requests=9), InFlight(), None),
    (Limits(requests=10), DayTotals(requests=10), InFlight(), "10 of 10 requests"),
    (Limits(requests=10), DayTotals(requests=8), InFlight(2, 10), "10 of 10 requests"),
    (Limits(requests=0), DayTotals(), InFlight(), "0 of 0 requests"),
    (Limits(tokens=100), DayTotals(prompt_tokens=50, completion_tokens=49), InFlight(), None),
    (Limits(tokens=100), DayTotals(prompt_tokens=50, completion_tokens=50), InFlight(),
     "100 of 100 tokens"),
    (Limits(tokens=100), DayTotals(prompt_tokens=50), InFlight(1, 50), "50 of 100 tokens"),
    (Limits(cost=1.0), DayTotals(cost=0.999), InFlight(), None),
    (Limits(cost=1.0), DayTotals(cost=1.0), InFlight(), "spent today"),
])
def test_budget_refusal_counts_settled_and_in_flight_requests(limits, used, flight,
                                                             refused) -> None:
    verdict = budget_refusal(limits, used, flight)
    if refused is None:
        assert verdict is None
    else:
        assert verdict is not None and refused in verdict


def test_cost_follows_the_configured_price_per_million_tokens() -> None:
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=200_000)
    assert cost_of(usage, Price(0.6, 2.5)) == pytest.approx(0.6 + 0.5)
    assert cost_of(usage, None) == 0.0


def test_day_is_the_utc_date_whatever_the_local_zone() -> None:
    assert utc_day(NOW) == "2026-11-28"
    assert utc_day(NOW + timedelta(seconds=31)) == "2026-11-29"
    paris = datetime(2026, 11, 29, 0, 30, tzinfo=UTC).astimezone(
        __import__("zoneinfo").ZoneInfo("Europe/Paris"))
    assert utc_day(paris) == "2026-11-29"


def test_breaker_cools_after_consecutive_failures_and_a_success_resets_the_count() -> None:
    breaker = Breaker(after=3, cooldown_s=60)
    assert breaker.failure(NOW, "503") is None
    assert breaker.failure(NOW, "503") is None
    breaker.success()
    assert breaker.failure(NOW, "503") is None
    assert breaker.failure(NOW, "503") is None
    until = breaker.failure(NOW, "timeout")
    assert until == NOW + timedelta(seconds=60)
    assert "3 consecutive failures, the last: timeout" in breaker.reason
    assert breaker.blocked(NOW + timedelta(seconds=59)) == until
    assert breaker.blocked(NOW + timedelta(seconds=60)) is None


def test_breaker_honours_retry_after_and_never_shortens_a_cooldown_in_force() -> None:
    breaker = Breaker(after=3, cooldown_s=60)
    until = breaker.rate_limited(NOW, 600.0, "429")
    assert until == NOW + timedelta(seconds=600)
    assert breaker.rate_limited(NOW, 5.0, "429") == until  # a shorter one does not win
    assert breaker.blocked(NOW + timedelta(seconds=599)) == until
    plain = Breaker(after=2, cooldown_s=60)
    assert plain.rate_limited(NOW, None, "429") is None  # no Retry-After: a failure
    assert plain.rate_limited(NOW, None, "429") == NOW + timedelta(seconds=60)


@pytest.mark.parametrize(("header", "expected"), [
    ("30", 30.0), (" 2.5 ", 2.5), ("0", 0.0), ("-4", 0.0), ("999999", 3600.0),
    ("Sun, 29 Nov 2026 00:00:00 GMT", 30.0), ("Sat, 28 Nov 2026 23:00:00 GMT", 0.0),
    ("soon", None), ("", None), (None, None), ("nan", None), ("inf", None),
])
def test_retry_after_parses_seconds_and_http_dates_and_is_capped(header, expected) -> None:
    assert parse_retry_after(header, NOW, 3600.0) == expected


def test_prepare_body_sets_the_configured_model_extra_body_and_stream_usage(policy) -> None:
    kimi = policy.cloud["kimi"]
    body = {"model": "something-else", "stream": True, "messages": [{"role": "user",
                                                                      "content": "x" * 400}],
            "provider": {"order": ["a"]}, "chat_template_kwargs": {"thinking": False}}
    prepared = prepare_body("/v1/chat/completions", body, kimi)
    sent = json.loads(prepared.body)
    assert sent["model"] == "moonshotai/kimi-k2.6"
    assert sent["provider"] == {"data_collection": "deny"}  # extra_body wins
    assert sent["chat_template_kwargs"] == {"thinking": False}  # passed through untouched
    assert sent["stream_options"] == {"include_usage": True}
    assert prepared.stream and prepared.strip_usage
    assert 100 <= prepared.prompt_estimate <= 110
    asked = prepare_body("/v1/chat/completions", {**body, "stream_options": {
        "include_usage": True}}, kimi)
    assert not asked.strip_usage
    whole = prepare_body("/v1/chat/completions", {**body, "stream": False}, kimi)
    assert not whole.stream and "stream_options" not in json.loads(whole.body)
    embedding = prepare_body("/v1/embeddings", {"input": "abc", "stream": True}, kimi)
    assert not embedding.stream
    groq = prepare_body("/v1/chat/completions", body, policy.cloud["groq"])
    assert "stream_options" not in json.loads(groq.body) and not groq.strip_usage


@pytest.mark.parametrize(("answer", "usage"), [
    ({"usage": {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}},
     Usage(12, 8)),
    ({"usage": {"prompt_tokens": 5, "total_tokens": 5}}, Usage(5, 0)),  # embeddings
    ({"x_groq": {"usage": {"prompt_tokens": 3, "completion_tokens": 4}}}, Usage(3, 4)),
    ({"usage": None}, None), ({"usage": {"prompt_tokens": "7"}}, None), ([], None),
    ({"choices": []}, None),
])
def test_usage_is_read_from_openai_and_groq_shapes(answer, usage) -> None:
    assert usage_from(answer) == usage


def test_sse_splitter_rejoins_events_cut_anywhere() -> None:
    stream = (b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n: ping\n\n'
              b'data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2}}\r\n\r\n'
              b"data: [DONE]\n\n")
    for cut in range(1, len(stream)):
        splitter = SseSplitter()
        events = splitter.feed(stream[:cut]) + splitter.feed(stream[cut:])
        assert b"".join(events) == stream
        assert len(events) == 4
        assert splitter.rest() == b""


def test_stream_tally_takes_the_provider_usage_or_estimates_from_chunks() -> None:
    tally = StreamTally()
    for event in (b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n', b": ping\n\n",
                  b'data: {"choices":[{"delta":{"content":"b"}}]}\n\n'):
        tally.take(read_event(event))
    assert tally.settled_usage(40) == Usage(40, 2, estimated=True)
    only = read_event(b'data: {"id":"x","choices":[],"usage":{"prompt_tokens":9,'
                      b'"completion_tokens":2,"total_tokens":11}}\n\n')
    assert only.usage_only and only.usage == Usage(9, 2)
    tally.take(only)
    tally.take(read_event(b"data: [DONE]\n\n"))
    assert tally.done and tally.settled_usage(40) == Usage(9, 2)
    last = read_event(b'data: {"choices":[{"delta":{},"finish_reason":"stop"}],'
                      b'"x_groq":{"usage":{"prompt_tokens":1,"completion_tokens":1}}}\n\n')
    assert last.usage == Usage(1, 1) and not last.usage_only  # content chunk: never dropped
