"""Property: under any sequence of backend and provider faults, spent budgets, GPU mode
changes and profiles, the cloud canaries (stand-in providers behind the real mushishi-egress)
never receive T1 or T1-strict work, and every request ends in a success or one of the stable
error codes (streams included: completed, or ended by an error event with one)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mushishi.services.router.errors import STABLE_CODES
from tests.integration.router.harness import ALL_PROFILES, PERSONAL_KEY, Box, running_box
from tests.standins.bus import PrivateBus
from tests.standins.gpumode import GpuModeStandin
from tests.standins.openai_server import Fault, OpenAIStandin

SOVEREIGN_PROFILES = {"private", "client", "strictcpu"}
CLOUD_BACKENDS = {"kimi", "groq"}
FAULTS = {
    "none": None, "500": Fault.status_code(500), "503": Fault.status_code(503),
    "429": Fault.status_code(429), "400": Fault.status_code(400), "hang": Fault.hang(),
    "die_mid_stream": Fault.die_mid_stream(1), "close": Fault.close(), "refuse": "refuse",
}

steps = st.lists(st.one_of(
    st.tuples(st.just("fault"), st.sampled_from(["gpu", "cpu", "kimi", "groq"]),
              st.sampled_from(sorted(FAULTS))),
    st.tuples(st.just("mode"), st.sampled_from(["forensic", "agent", "creative", "off",
                                                "switching", "gone", "back"]), st.just("")),
    st.tuples(st.just("request"), st.sampled_from(ALL_PROFILES),
              st.sampled_from(["openai", "openai-stream", "anthropic", "anthropic-stream"])),
), min_size=1, max_size=8)


@pytest.fixture
async def world(tmp_path: Path, private_bus: PrivateBus, gpud: GpuModeStandin
                ) -> AsyncIterator[tuple[Box, GpuModeStandin, PrivateBus]]:
    async with running_box(
        tmp_path, bus_address=private_bus.address, follow_gpu=True, real_egress=True,
        kimi_extra="budget = { requests_per_day = 3 }",  # spent during the run
        router_extra="first_byte_timeout_s = 0.4\nstream_idle_timeout_s = 0.4\n"
                     "connect_timeout_s = 0.3",
        private_extra="queue_timeout_s = 0.3",
        client_extra='queue_timeout_s = 0.3\non_mode_mismatch = "switch"',
        strict_extra="queue_timeout_s = 0.3",
    ) as box:
        yield box, gpud, private_bus


async def apply_fault(server: OpenAIStandin, name: str) -> None:
    fault = FAULTS[name]
    if fault == "refuse":
        await server.refuse()
        return
    await server.accept()
    server.fail_always(fault if isinstance(fault, Fault) else None)


async def send(box: Box, profile: str, api: str) -> tuple[int, dict[str, str], bytes]:
    stream = api.endswith("stream")
    body: dict = {"model": profile, "messages": [{"role": "user",
                                                   "content": f"work of {profile}"}]}
    path = "/v1/chat/completions"
    if api.startswith("anthropic"):
        path, body["max_tokens"] = "/v1/messages", 16
    if stream:
        body["stream"] = True
    async with aiohttp.ClientSession() as session, session.post(
        box.base_url + path, json=body, headers={"Authorization": f"Bearer {PERSONAL_KEY}"},
    ) as response:
        return response.status, dict(response.headers), await response.read()


def assert_well_ended(api: str, status: int, headers: dict[str, str], raw: bytes) -> None:
    if status >= 400:
        assert json.loads(raw)["error"]["code"] in STABLE_CODES, raw
        return
    assert status == 200, raw
    if not api.endswith("stream") or not headers.get("Content-Type", "").startswith(
            "text/event-stream"):
        json.loads(raw)
        return
    if api.startswith("anthropic"):
        completed = b"event: message_stop" in raw
    else:
        completed = raw.rstrip().endswith(b"data: [DONE]")
    if not completed:  # ended by an error event carrying a stable code
        last = raw.decode().strip().split("\n\n")[-1].split("data: ", 1)[1]
        assert json.loads(last)["error"]["code"] in STABLE_CODES, raw


@settings(max_examples=60, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(script=steps)
async def test_canary_never_sees_t1_and_every_request_ends_in_success_or_a_stable_code(
    world: tuple[Box, GpuModeStandin, PrivateBus], script: list[tuple[str, str, str]],
) -> None:
    box, gpud, bus = world
    for kind, target, value in script:
        if kind == "fault":
            server = {"gpu": box.gpu, "cpu": box.cpu, **box.cloud}[target]
            await apply_fault(server, value)
        elif kind == "mode":
            if target == "gone":
                gpud.disconnect()
            elif target == "back":
                if gpud.bus is None:
                    await gpud.connect(bus.address)
            elif gpud.bus is not None:
                if target == "switching":
                    gpud.set_state("switching")
                else:
                    gpud.set_mode(target)
        else:
            status, headers, raw = await send(box, target, value)
            assert_well_ended(value, status, headers, raw)
            if target in SOVEREIGN_PROFILES:
                assert headers["X-Mushishi-Backend"] not in CLOUD_BACKENDS
        assert sovereign_work_in_the_cloud(box) == []


def test_the_canaries_see_t2_work_so_the_property_is_not_vacuous(tmp_path_factory) -> None:
    """The same run above sends T2/T3 work to the providers; here, one such request."""
    import asyncio

    async def one() -> int:
        async with running_box(tmp_path_factory.mktemp("p"), real_egress=True) as box:
            box.gpu.fail_always(Fault.status_code(500))
            box.cpu.fail_always(Fault.status_code(500))
            status, _, _ = await send(box, "personal", "openai")
            assert status == 200
            return len([r for server in box.cloud.values() for r in server.chat_requests()
                        if "work of personal" in json.dumps(r.body)])

    assert asyncio.run(one()) == 1


def sovereign_work_in_the_cloud(box: Box) -> list[str]:
    """Prompts of T1/T1-strict profiles that reached a stand-in provider: always none."""
    seen = [json.dumps(record.body) for server in box.cloud.values()
            for record in server.requests]
    return [text for text in seen for profile in SOVEREIGN_PROFILES
            if f"work of {profile}" in text]
