"""Status, readiness, metrics, headers and logs: what operators see, and that prompts never
appear in any of it."""

from __future__ import annotations

import json
import logging

import aiohttp
import pytest

from tests.integration.router.harness import PERSONAL_KEY, Box
from tests.standins.openai_server import Fault

SECRET = "the-merger-closes-on-friday"


async def get(box: Box, path: str, headers: dict[str, str] | None = None
              ) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.get(
        box.base_url + path, headers=headers or {}) as response:
        return response.status, dict(response.headers), await response.read()


async def chat(box: Box, model: str, *, stream: bool = False) -> int:
    async with aiohttp.ClientSession() as session, session.post(
        box.base_url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {PERSONAL_KEY}"},
        json={"model": model, "stream": stream,
              "messages": [{"role": "user", "content": SECRET}]},
    ) as response:
        await response.read()
        return response.status


async def test_status_reports_sovereignty_backends_profiles_and_cloud_share(box: Box) -> None:
    box.gpu.fail_next(Fault.status_code(500))
    box.cpu.fail_next(Fault.status_code(500))
    assert await chat(box, "personal") == 200  # answered by kimi, through the egress
    assert await chat(box, "personal") == 200  # answered by gpu
    status, _, raw = await get(box, "/status")  # loopback: no key needed
    assert status == 200
    report = json.loads(raw)
    assert set(report["sovereignty"]) >= {"config", "connect_time", "kernel", "detail"}
    assert report["sovereignty"]["config"] is True
    assert report["sovereignty"]["connect_time"] is True
    assert report["backends"]["gpu"] == report["backends"]["gpu"] | {
        "state": "up", "local": True, "modes": ["agent", "forensic"], "in_flight": 0}
    assert report["backends"]["kimi"]["local"] is False
    assert report["profiles"]["private"]["tier"] == "T1"
    assert report["profiles"]["private"]["would_use"] == "gpu"
    assert report["cloud_share"]["personal"] == report["cloud_share"]["personal"] | {
        "hour": 0.5, "day": 0.5, "requests_hour": 2, "requests_day": 2}
    assert report["cloud_share"]["private"]["requests_day"] == 0


async def test_status_over_the_unix_socket_needs_no_key(box: Box) -> None:
    connector = aiohttp.UnixConnector(path=box.unix_socket)
    async with aiohttp.ClientSession(connector=connector) as session, \
            session.get("http://router/status") as response:
        assert response.status == 200
        assert "profiles" in await response.json()


async def test_health_and_ready(box: Box) -> None:
    status, headers, raw = await get(box, "/health")
    assert (status, json.loads(raw)) == (200, {"status": "ok"})
    assert headers["X-Mushishi-Backend"] == "none"
    status, _, raw = await get(box, "/ready")
    ready = json.loads(raw)
    assert status == 200 and ready["ready"] is True
    assert "private" in ready["servable_profiles"]
    assert ready["sovereignty"]["summary"].startswith("config ✓, connect-time ✓, kernel")
    await box.gpu.refuse()
    await box.cpu.refuse()
    box.egress.fail_always(Fault.status_code(500))
    await box.router.probe("gpu")
    await box.router.probe("cpu")
    status, _, raw = await get(box, "/ready")
    # cloud hops still count: personal and cloudy can be served
    assert status == 200 and "private" not in json.loads(raw)["servable_profiles"]


async def test_metrics_count_requests_fallbacks_latency_tokens_and_states(box: Box) -> None:
    box.gpu.fail_next(Fault.status_code(503))
    assert await chat(box, "private") == 200
    assert await chat(box, "private", stream=True) == 200
    status, headers, raw = await get(box, "/metrics")
    text = raw.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert headers["X-Mushishi-Profile"] == "none"  # every response carries the headers
    assert 'mushishi_router_requests_total{backend="cpu",endpoint="chat/completions",' \
        'outcome="success",profile="private"} 1.0' in text
    assert 'mushishi_router_fallbacks_total{backend="gpu",profile="private",reason="status"}' \
        " 1.0" in text
    assert 'mushishi_router_time_to_first_byte_seconds_count{backend="cpu",' \
        'endpoint="chat/completions",profile="private"}' in text
    assert 'mushishi_router_request_duration_seconds_count{backend="gpu",' \
        'endpoint="chat/completions",profile="private"} 1.0' in text
    assert 'mushishi_router_tokens_total{backend="cpu",kind="completion",profile="private"}' \
        " 8.0" in text
    assert 'mushishi_router_backend_state{backend="gpu",state="up"} 1.0' in text
    assert 'mushishi_router_sovereignty_layer{layer="connect_time",state="ok"} 1.0' in text
    assert 'mushishi_router_cloud_share_ratio{profile="personal",window="hour"} 0.0' in text
    assert "mushishi_router_overhead_seconds_bucket" in text
    assert 'mushishi_build_info{daemon="router"' in text
    assert SECRET not in text


async def test_no_prompt_or_completion_text_reaches_the_logs(
    box: Box, caplog: pytest.LogCaptureFixture
) -> None:
    box.gpu.fail_next(Fault.die_mid_stream(2))
    with caplog.at_level(logging.DEBUG):
        for model in ("private", "personal", "client", "nope"):
            await chat(box, model)
            await chat(box, model, stream=True)
    records = caplog.records
    assert any("chat/completions private -> gpu: 200 success" in r.getMessage()
               for r in records)
    for record in records:
        text = record.getMessage() + json.dumps({k: str(v) for k, v in vars(record).items()})
        assert SECRET not in text
        assert "gpu-3" not in text  # nor the answer
    fields = next(r for r in records if "private -> gpu" in r.getMessage()).__dict__
    assert fields["MUSHISHI_BACKEND"] == "gpu" and fields["MUSHISHI_OUTCOME"] == "success"
