"""Busy probes against stand-ins that speak vLLM's, ComfyUI's and a JSON gateway's formats."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from mushishi.shared.busy_probes import read_probe
from mushishi.shared.config.gpu import BusyProbeSettings
from tests.integration.gpud.conftest import serve
from tests.standins import comfyui, json_queue, vllm_gpu


async def test_vllm_probe_idle_then_busy_with_a_held_stream(started: list[web.AppRunner]
                                                            ) -> None:
    runner, base = await serve(vllm_gpu.build_app("nemotron", tokens=4, token_delay=0))
    started.append(runner)
    probe = BusyProbeSettings(kind="vllm", url=f"{base}/metrics")
    async with aiohttp.ClientSession() as session:
        idle = await read_probe(session, "vllm-forensic", probe, 5)
        assert idle is not None and idle.in_flight == 0 and not idle.busy
        await session.post(f"{base}/standin/hold")
        response = await session.post(f"{base}/v1/chat/completions", json={
            "model": "nemotron", "messages": [], "stream": True})
        await response.content.readline()  # the first chunk is out; the rest is held
        busy = await read_probe(session, "vllm-forensic", probe, 5)
        assert busy is not None and busy.in_flight == 1
        assert busy.line() == "vllm-forensic: 1 request(s) running, 0 waiting (vLLM)"
        await session.post(f"{base}/standin/release")
        body = await response.text()
        assert body.rstrip().endswith("data: [DONE]")
        after = await read_probe(session, "vllm-forensic", probe, 5)
        assert after is not None and after.in_flight == 0


async def test_comfyui_probe_counts_running_and_pending(started: list[web.AppRunner]) -> None:
    runner, base = await serve(comfyui.build_app(seconds=30))
    started.append(runner)
    probe = BusyProbeSettings(kind="comfyui", url=f"{base}/queue")
    async with aiohttp.ClientSession() as session:
        assert (await read_probe(session, "comfyui", probe, 5)).in_flight == 0  # type: ignore[union-attr]
        for _ in range(3):
            await session.post(f"{base}/prompt", json={"prompt": {"3": {
                "class_type": "KSampler", "inputs": {"seed": 1, "steps": 4}}}})
        await asyncio.sleep(0.05)
        reading = await read_probe(session, "comfyui", probe, 5)
    assert reading is not None and reading.in_flight == 3
    assert reading.detail == "1 prompt(s) running, 2 pending (ComfyUI)"


async def test_json_probe_reads_the_configured_path(started: list[web.AppRunner]) -> None:
    runner, base = await serve(json_queue.build_app())
    started.append(runner)
    async with aiohttp.ClientSession() as session:
        await session.post(f"{base}/jobs?seconds=30")
        await session.post(f"{base}/jobs?seconds=30")
        count = await read_probe(session, "tts", BusyProbeSettings(
            kind="json", url=f"{base}/queue", json_path="in_flight"), 5)
        listed = await read_probe(session, "tts", BusyProbeSettings(
            kind="json", url=f"{base}/queue", json_path="queues.tts"), 5)
    assert count is not None and count.in_flight == 2
    assert listed is not None and listed.in_flight == 2


async def test_unreadable_or_wrong_probe_counts_as_busy(started: list[web.AppRunner]) -> None:
    runner, base = await serve(json_queue.build_app())
    started.append(runner)
    async with aiohttp.ClientSession() as session:
        refused = await read_probe(session, "vllm", BusyProbeSettings(
            kind="vllm", url="http://127.0.0.1:1/metrics"), 2)
        wrong = await read_probe(session, "vllm", BusyProbeSettings(
            kind="vllm", url=f"{base}/queue"), 2)
        missing = await read_probe(session, "vllm", BusyProbeSettings(
            kind="vllm", url=f"{base}/nothing"), 2)
        none = await read_probe(session, "audio", BusyProbeSettings(kind="none"), 2)
    assert refused is not None and refused.busy and "unreadable" in refused.detail
    assert wrong is not None and wrong.busy and "unusable" in wrong.detail
    assert missing is not None and missing.busy and "HTTP 404" in missing.detail
    assert none is None
