"""OTLP/HTTP traces of routed requests, received and decoded by a stand-in collector: profile,
tier, backend, fallbacks, latency; never the prompt, the answer or the key; a dead or hung
collector never delays a request; without `[traces]` OpenTelemetry is not even imported."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from tests.integration.router.harness import PERSONAL_KEY, config_text, running_box
from tests.standins.openai_server import Fault
from tests.standins.otlp_collector import OtlpCollector

SECRET = "the-acquisition-target-is-acme"


def traces(endpoint: str) -> str:
    return f'\n[traces]\nendpoint = "{endpoint}"\nschedule_delay_s = 0.1\n' \
           'export_timeout_s = 5\n'


async def chat(base_url: str, model: str) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.post(
            base_url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {PERSONAL_KEY}"},
            json={"model": model, "messages": [{"role": "user", "content": SECRET}]},
    ) as response:
        return response.status, {k.lower(): v for k, v in response.headers.items()}, \
            await response.read()


async def test_a_routed_request_becomes_a_span_with_its_route_and_fallbacks(
        tmp_path: Path) -> None:
    collector = await OtlpCollector().start()
    try:
        async with running_box(tmp_path, extra=traces(collector.endpoint)) as box:
            box.gpu.fail_next(Fault.status_code(500))
            status, headers, body = await chat(box.base_url, "personal")
            assert status == 200 and headers["x-mushishi-backend"] == "cpu"
            [span] = await collector.wait_spans(1)
    finally:
        await collector.stop()
    attributes = span["attributes"]
    assert span["kind"] == "SPAN_KIND_SERVER" and span["status"] == "STATUS_CODE_UNSET"
    assert span["resource"]["service.name"] == "mushishi-router"
    assert attributes == attributes | {
        "openinference.span.kind": "LLM", "mushishi.profile": "personal",
        "mushishi.tier": "T2", "mushishi.backend": "cpu", "mushishi.outcome": "success",
        "mushishi.fallbacks": 1, "mushishi.api": "openai",
        "mushishi.chain": ["gpu", "cpu", "kimi", "groq"], "llm.model_name": "cpu-alias",
        "http.response.status_code": 200, "mushishi.backend_local": True,
        "mushishi.request_id": headers["x-request-id"]}
    assert attributes["llm.token_count.completion"] > 0
    assert 0 < attributes["mushishi.time_to_first_byte_ms"] <= attributes[
        "mushishi.duration_ms"]
    span_ms = (span["end_ns"] - span["start_ns"]) / 1e6
    assert abs(span_ms - attributes["mushishi.duration_ms"]) < 0.01
    assert span["events"] == [{"name": "hop_failed", "attributes": {
        "mushishi.backend": "gpu", "mushishi.failure": "status", "mushishi.cloud": False,
        "http.response.status_code": 500}}]
    answer = json.loads(body)["choices"][0]["message"]["content"]
    for raw in collector.bodies:  # nothing of the request or the answer left the router
        assert SECRET.encode() not in raw
        assert answer.encode() not in raw
        assert PERSONAL_KEY.encode() not in raw


async def test_a_refused_request_is_an_error_span_naming_its_code(tmp_path: Path) -> None:
    collector = await OtlpCollector().start()
    try:
        # No gpud: the T1-strict profile's required mode cannot be verified.
        async with running_box(tmp_path, extra=traces(collector.endpoint)) as box:
            status, _, _ = await chat(box.base_url, "client")
            assert status == 503
            [span] = await collector.wait_spans(1)
    finally:
        await collector.stop()
    assert span["status"] == "STATUS_CODE_ERROR"
    assert span["status_message"] == "mode_mismatch"
    assert span["attributes"]["mushishi.backend"] == "none"
    assert span["attributes"]["mushishi.tier"] == "T1-strict"
    assert span["attributes"]["http.response.status_code"] == 503


async def test_a_hung_collector_never_delays_a_request(tmp_path: Path) -> None:
    stuck: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stuck.append(writer)
        await asyncio.sleep(3600)

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with running_box(tmp_path, extra=traces(f"http://127.0.0.1:{port}/v1/traces")
                               ) as box:
            started = time.monotonic()
            for _ in range(20):
                status, _, _ = await chat(box.base_url, "personal")
                assert status == 200
            elapsed = time.monotonic() - started
            await asyncio.sleep(0.3)  # the batch thread has tried to export by now
            assert stuck, "the router never tried to export"
    finally:
        server.close()
    # One export waits up to export_timeout_s (5 s) on the hung collector; the requests
    # never waited for it.
    assert elapsed < 4.0, elapsed


def test_without_traces_opentelemetry_is_not_imported(tmp_path: Path) -> None:
    config = tmp_path / "mushishi.toml"
    config.write_text(config_text(gpu_url="http://127.0.0.1:9/v1", cpu_url="http://127.0.0.1:9/v1",
                                  egress_socket=str(tmp_path / "egress.sock")))
    script = (
        "import asyncio, sys\n"
        "from mushishi.services.router.app import Router\n"
        "from mushishi.shared.config import load_settings\n"
        "async def main():\n"
        f"    router = Router(load_settings({str(config)!r}), follow_gpu=False, environ={{}})\n"
        "    loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "    print(router.tracer, loaded)\n"
        "    await router.close()\n"
        "asyncio.run(main())\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None []"
