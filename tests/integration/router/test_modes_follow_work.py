"""Modes that follow the work (issue 15 items 6-7), over a real private D-Bus with the
stand-in io.mushishi.GpuMode1: switches asked for by requests of any tier, shared by
concurrent requests, held back by the dwell time, refused (T2 takes its next hop); the idle
return; and the SSE comment lines a streamed request gets while it waits, read by the
official openai and anthropic SDKs and as raw bytes."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import anthropic
import openai

from tests.integration.router.harness import (
    PERSONAL_KEY,
    Box,
    post_chat,
    running_box,
    sha,
    wait_for,
)
from tests.standins.bus import PrivateBus
from tests.standins.gpumode import GpuModeStandin
from tests.standins.images import ImageStandin

AGENT_KEY = "sk-test-agentic"
ART_KEY = "sk-test-art"
# A second T1-strict profile on the same backend, in the other mode it runs in; its key is
# added to [keys] (the harness's table ends the file, so its line comes first).
AGENTIC = f'''"{sha(AGENT_KEY)}" = ["agentic"]
[profiles.agentic]
tier = "T1-strict"
chain = ["gpu"]
require_mode = "agent"
on_mode_mismatch = "switch"
queue_timeout_s = 10
'''
T2_KEY = "sk-test-t2switch"
T2SWITCH = f'''"{sha(T2_KEY)}" = ["t2switch"]
[profiles.t2switch]
tier = "T2"
chain = ["gpu", "cpu", "kimi"]
on_mode_mismatch = "switch"
queue_timeout_s = 10
'''


@contextlib.asynccontextmanager
async def followed(tmp_path: Path, bus: PrivateBus, *, modes: str = "", extra: str = "",
                   **config: str) -> AsyncIterator[Box]:
    text = extra + (f"\n[modes]\n{modes}\n" if modes else "")
    async with running_box(tmp_path, bus_address=bus.address, follow_gpu=True, extra=text,
                           **config) as box:
        yield box


async def until_mode(box: Box, mode: str, state: str = "ready") -> None:
    await wait_for(lambda: box.router.state.gpu.active_mode == mode
                   and box.router.state.gpu.state == state, what=f"{mode} ({state}) followed")


async def post(box: Box, model: str, key: str = PERSONAL_KEY, *, stream: bool = False
               ) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.post(
        box.base_url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
        json={"model": model, "messages": [{"role": "user", "content": "hi"}],
              "stream": stream},
    ) as response:
        return response.status, dict(response.headers), await response.read()


def switching_client(queue_timeout_s: float = 10) -> str:
    """The client profile (T1-strict, forensic) with on_mode_mismatch = "switch"."""
    return f'queue_timeout_s = {queue_timeout_s}\non_mode_mismatch = "switch"'


async def test_t2_asks_for_its_gpu_mode_then_is_served_by_the_gpu(
    tmp_path: Path, private_bus: PrivateBus, gpud: GpuModeStandin
) -> None:
    gpud.set_mode("creative")
    async with followed(tmp_path, private_bus, extra=T2SWITCH,
                        gpu_extra="max_concurrency = 4") as box:
        await until_mode(box, "creative")
        gpud.switch_delay = 0.3
        # Without "switch" (the default), T2 skips the gpu with no round trip, as before.
        status, headers, _ = await post_chat(box, "personal")
        assert (status, headers["X-Mushishi-Backend"]) == (200, "cpu")
        assert gpud.switch_calls == []
        preview = box.router.status()["profiles"]["t2switch"]["reason"]
        assert "would ask gpud to switch to forensic" in preview
        results = await asyncio.gather(*(post(box, "t2switch", T2_KEY) for _ in range(3)))
        assert [(s, h["X-Mushishi-Backend"]) for s, h, _ in results] == [(200, "gpu")] * 3
        # One switch for the three, to the first mode the backend lists, with its reason.
        assert gpud.switch_calls == [("forensic", False)]
        assert gpud.switch_reasons == ["request:profile=t2switch"]


async def test_t2_takes_its_next_hop_when_the_switch_is_refused(
    tmp_path: Path, private_bus: PrivateBus, gpud: GpuModeStandin
) -> None:
    gpud.set_mode("creative")
    gpud.busy_reasons = ["comfyui: 1 job running"]
    async with followed(tmp_path, private_bus, extra=T2SWITCH) as box:
        await until_mode(box, "creative")
        started = asyncio.get_running_loop().time()
        status, headers, _ = await post(box, "t2switch", T2_KEY)
        assert (status, headers["X-Mushishi-Backend"]) == (200, "cpu")
        assert asyncio.get_running_loop().time() - started < 2  # no waiting
        assert gpud.switch_calls == [("forensic", False)]


async def test_dwell_time_keeps_a_second_profile_from_switching_back(
    tmp_path: Path, private_bus: PrivateBus, gpud: GpuModeStandin
) -> None:
    gpud.set_mode("agent")
    async with followed(tmp_path, private_bus, extra=AGENTIC, modes="min_mode_dwell_s = 60",
                        client_extra=switching_client()) as box:
        await until_mode(box, "agent")
        # The router has not seen a mode change since it started: no dwell yet.
        status, headers, _ = await post_chat(box, "client")
        assert (status, headers["X-Mushishi-Backend"]) == (200, "gpu")
        assert gpud.active == "forensic"
        status, _, raw = await post(box, "agentic", AGENT_KEY)
        error = json.loads(raw)["error"]
        assert (status, error["code"]) == (503, "mode_mismatch")
        assert "modes.min_mode_dwell_s" in error["message"]
        assert gpud.switch_calls == [("forensic", False)]  # the router did not even ask
        # A person's switch is never held back by the dwell time.
        gpud.set_mode("agent")
        await until_mode(box, "agent")
        assert box.router.state.gpu.active_mode == "agent"


async def test_without_dwell_the_second_profile_switches_back(
    tmp_path: Path, private_bus: PrivateBus, gpud: GpuModeStandin
) -> None:
    gpud.set_mode("agent")
    async with followed(tmp_path, private_bus, extra=AGENTIC, modes="min_mode_dwell_s = 0",
                        client_extra=switching_client()) as box:
        await until_mode(box, "agent")
        assert (await post_chat(box, "client"))[0] == 200
        status, headers, _ = await post(box, "agentic", AGENT_KEY)
        assert (status, headers["X-Mushishi-Backend"]) == (200, "gpu")
        assert gpud.switch_reasons == ["request:profile=client", "request:profile=agentic"]


async def test_idle_return_after_quiet_time_not_counting_the_cpu_floor(
    tmp_path: Path, private_bus: PrivateBus, gpud: GpuModeStandin
) -> None:
    gpud.set_mode("forensic")
    async with followed(tmp_path, private_bus,
                        modes='idle_mode = "agent"\nidle_after_s = 1.5\nmin_mode_dwell_s = 0',
                        private_extra="queue_timeout_s = 5") as box:
        await until_mode(box, "forensic")
        clock = asyncio.get_running_loop().time
        # GPU work keeps the mode: a request to the gpu every 0.5 s for 2.5 s.
        started = clock()
        while clock() - started < 2.5:
            _, headers, _ = await post_chat(box, "private")
            assert headers["X-Mushishi-Backend"] == "gpu"
            await asyncio.sleep(0.5)
        assert gpud.switch_calls == []
        # CPU-floor work is not GPU work: the box returns to agent while it goes on.
        quiet = clock()
        while gpud.active != "agent":
            _, headers, _ = await post_chat(box, "strictcpu")
            assert headers["X-Mushishi-Backend"] == "cpu"
            assert clock() - quiet < 6, "no idle return"
            await asyncio.sleep(0.2)
        assert clock() - quiet >= 1.4
        assert gpud.switch_calls == [("agent", False)]
        assert gpud.switch_reasons == ["idle"]
        await wait_for(lambda: box.router.status()["gpu"]["last_switch_reason"] == "idle",
                       what="LastSwitchReason idle in /status")
        # In the idle mode already: nothing more is asked.
        await asyncio.sleep(2.5)
        assert gpud.switch_calls == [("agent", False)]


async def test_idle_return_refused_by_a_hold_is_retried_later(
    tmp_path: Path, private_bus: PrivateBus, gpud: GpuModeStandin
) -> None:
    gpud.set_mode("forensic")
    async with followed(tmp_path, private_bus,
                        modes='idle_mode = "agent"\nidle_after_s = 1\nmin_mode_dwell_s = 0'
                        ) as box:
        await until_mode(box, "forensic")
        gpud.refuse_switch = "io.mushishi.GpuMode1.Error.Held"
        await wait_for(lambda: len(gpud.switch_calls) == 1, what="idle return asked")
        await asyncio.sleep(0.5)
        assert len(gpud.switch_calls) == 1  # not hammered: the next try waits idle_after_s
        gpud.refuse_switch = None
        await wait_for(lambda: gpud.active == "agent", what="idle return retried")


@contextlib.asynccontextmanager
async def waiting_for_a_switch(tmp_path: Path, private_bus: PrivateBus, gpud: GpuModeStandin,
                               switch_delay: float) -> AsyncIterator[Box]:
    """A router following gpud in creative mode, whose `client` profile switches to forensic
    (a switch takes `switch_delay` s) and tells a waiting caller every 0.4 s."""
    gpud.set_mode("creative")
    async with followed(tmp_path, private_bus, client_extra=switching_client(),
                        modes="min_mode_dwell_s = 0", router_extra="wait_feedback_s = 0.4"
                        ) as box:
        await until_mode(box, "creative")
        gpud.switch_delay = switch_delay
        yield box


async def test_a_streamed_request_waiting_for_its_mode_gets_comments_the_sdk_ignores(
    tmp_path: Path, private_bus: PrivateBus, gpud: GpuModeStandin
) -> None:
    async with waiting_for_a_switch(tmp_path, private_bus, gpud, 1.5) as box:
        async with openai.AsyncOpenAI(base_url=box.openai_base, api_key=PERSONAL_KEY,
                                      max_retries=0) as api:
            stream = await api.chat.completions.create(
                model="client", messages=[{"role": "user", "content": "hi"}], stream=True)
            text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream
                            if chunk.choices])
        assert text == " ".join(f"gpu-{i}" for i in range(8))
        # The same, as bytes on the wire.
        gpud.set_mode("creative")
        await until_mode(box, "creative")
        status, headers, raw = await post(box, "client", stream=True)
        assert status == 200 and headers["X-Mushishi-Backend"] == "pending"
        lines = raw.decode().split("\n\n")
        waiting = [line for line in lines if line.startswith(": waiting for mode forensic, ")]
        assert len(waiting) >= 2, raw[:400]
        assert ": backend gpu" in lines
        assert lines.index(": backend gpu") > lines.index(waiting[-1])
        assert raw.rstrip().endswith(b"data: [DONE]")
        # Not streamed: nothing extra, an ordinary JSON answer with the real backend named.
        gpud.set_mode("creative")
        await until_mode(box, "creative")
        status, headers, raw = await post(box, "client")
        assert (status, headers["X-Mushishi-Backend"]) == (200, "gpu")
        assert json.loads(raw)["choices"][0]["message"]["content"].startswith("gpu-0")


async def test_anthropic_stream_waiting_for_its_mode_gets_comments_the_sdk_ignores(
    tmp_path: Path, private_bus: PrivateBus, gpud: GpuModeStandin
) -> None:
    async with waiting_for_a_switch(tmp_path, private_bus, gpud, 1.2) as box:
        async with anthropic.AsyncAnthropic(base_url=box.base_url, api_key=PERSONAL_KEY,
                                            max_retries=0) as api, api.messages.stream(
                model="client", max_tokens=64,
                messages=[{"role": "user", "content": "hi"}]) as stream:
            text = "".join([piece async for piece in stream.text_stream])
        assert text == " ".join(f"gpu-{i}" for i in range(8))


async def test_a_refusal_after_the_wait_was_announced_ends_the_stream_with_its_code(
    tmp_path: Path, private_bus: PrivateBus, gpud: GpuModeStandin
) -> None:
    gpud.set_mode("creative")
    async with followed(tmp_path, private_bus, client_extra=switching_client(1.5),
                        modes="min_mode_dwell_s = 0", router_extra="wait_feedback_s = 0.3"
                        ) as box:
        await until_mode(box, "creative")
        gpud.switch_delay = 4.0  # longer than the queue timeout
        status, headers, raw = await post(box, "client", stream=True)
        assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
        text = raw.decode()
        assert ": waiting for mode forensic, " in text
        event = json.loads(text.rstrip().rsplit("data: ", 1)[1])
        assert event["error"]["code"] == "mode_mismatch"
        assert "[DONE]" not in text
        await until_mode(box, "forensic")  # the slow switch ends after all
        async with openai.AsyncOpenAI(base_url=box.openai_base, api_key=PERSONAL_KEY,
                                      max_retries=0) as api:
            gpud.set_mode("creative")
            await until_mode(box, "creative")
            stream = await api.chat.completions.create(
                model="client", messages=[{"role": "user", "content": "hi"}], stream=True)
            try:
                async for _ in stream:
                    pass
            except openai.APIError as error:
                assert "mode_mismatch" in str(error.body) or "forensic" in str(error)
            else:
                raise AssertionError("the SDK did not surface the error event")



async def test_t2_does_not_wait_for_a_switch_it_did_not_ask_for(
    tmp_path: Path, private_bus: PrivateBus, gpud: GpuModeStandin
) -> None:
    gpud.set_mode("creative")
    async with followed(tmp_path, private_bus, extra=T2SWITCH) as box:
        await until_mode(box, "creative")
        gpud.set_state("switching")  # a person's switch, to a mode the router cannot know
        await until_mode(box, "creative", "switching")
        started = asyncio.get_running_loop().time()
        status, headers, _ = await post(box, "t2switch", T2_KEY)
        assert (status, headers["X-Mushishi-Backend"]) == (200, "cpu")
        assert asyncio.get_running_loop().time() - started < 2
        assert gpud.switch_calls == []


async def test_an_images_request_switches_to_the_mode_of_its_image_backend(
    tmp_path: Path, private_bus: PrivateBus, gpud: GpuModeStandin
) -> None:
    images = await ImageStandin("sdxl-turbo").start()
    try:
        gpud.set_mode("agent")
        async with followed(tmp_path, private_bus, extra=f'''"{sha(ART_KEY)}" = ["art"]
[backends.imagegen]
url = "{images.url}"
model = "sdxl-turbo"
modes = ["creative"]
endpoints = ["images/generations"]

[profiles.art]
tier = "T1"
chain = ["imagegen"]
on_mode_mismatch = "switch"
queue_timeout_s = 10
''', modes="min_mode_dwell_s = 0") as box:
            await until_mode(box, "agent")
            gpud.switch_delay = 0.5
            async with openai.AsyncOpenAI(base_url=box.openai_base, api_key=ART_KEY,
                                          max_retries=0) as api:
                raw = await api.images.with_raw_response.generate(
                    model="art", prompt="a lighthouse at dusk", size="64x32",
                    response_format="b64_json")
            assert raw.headers["x-mushishi-backend"] == "imagegen"
            assert raw.parse().data[0].b64_json
            assert gpud.switch_calls == [("creative", False)]
            assert gpud.switch_reasons == ["request:profile=art"]
    finally:
        await images.stop()
