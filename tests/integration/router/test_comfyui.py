"""ComfyUI behind the router (`kind = "comfyui"`, DESIGN.md §9): the official openai SDK's
images.generate runs the configured API-format workflow on a ComfyUI stand-in that speaks
ComfyUI's real API (/prompt, /ws progress, /history, /view), with the prompt, negative
prompt, seed, size and count placed into the named nodes, answered as b64_json or as a URL
the router serves."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest
from aiohttp import web

from tests.integration.router.harness import Box, running_box, sha, wait_for
from tests.paths import REPO
from tests.standins import comfyui as standin

KEY = "sk-test-creative"
WORKFLOW = REPO / "tests" / "assets" / "comfyui" / "txt2img.json"
INPUTS = ('{ prompt = "6.inputs.text", negative_prompt = "7.inputs.text", '
          'seed = "3.inputs.seed", width = "5.inputs.width", height = "5.inputs.height"')


@dataclass
class ComfyBox:
    box: Box
    comfy: dict[str, Any]  # the stand-in's state: history, clients, files
    runner: web.AppRunner

    def client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.box.openai_base, api_key=KEY, max_retries=0)


def comfy_backend(name: str, origin: str, workflow: Path, inputs: str, extra: str = "") -> str:
    """One `kind = "comfyui"` backend on the stand-in."""
    return f"""
[backends.{name}]
url = "{origin}"
kind = "comfyui"
model = "sd15"
workflow = "{workflow}"
workflow_inputs = {inputs}
{extra}
"""


def comfy_config(origin: str, workflow: Path, failing: Path) -> str:
    runs = INPUTS + " }"
    return f"""
"{sha(KEY)}" = ["creative", "creativeruns", "creativefail", "creativelong"]
""" + comfy_backend("comfy", origin, workflow, INPUTS + ', n = "5.inputs.batch_size" }') \
        + comfy_backend("comfyruns", origin, workflow, runs) \
        + comfy_backend("comfylong", origin, workflow, runs, "first_byte_timeout_s = 60") \
        + comfy_backend("comfyfail", origin, failing, '{ prompt = "6.inputs.text" }') + """
[profiles.creative]
tier = "T1"
chain = ["comfy"]
queue_timeout_s = 1

[profiles.creativeruns]
tier = "T2"
chain = ["comfyruns"]

[profiles.creativelong]
tier = "T2"
chain = ["comfylong"]

[profiles.creativefail]
tier = "T1-strict"
chain = ["comfyfail"]
"""


@contextlib.asynccontextmanager
async def comfy_box(tmp_path: Path) -> AsyncIterator[ComfyBox]:
    app = standin.build_app(seconds=0.05)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    workflow = tmp_path / "txt2img.json"
    shutil.copy(WORKFLOW, workflow)
    failing = tmp_path / "failing.json"
    graph = json.loads(WORKFLOW.read_text())
    graph["10"] = {"class_type": "StandinFail", "inputs": {"images": ["8", 0]}}
    failing.write_text(json.dumps(graph))
    try:
        async with running_box(tmp_path, extra=comfy_config(
                f"http://127.0.0.1:{port}", workflow, failing)) as box:
            await wait_for(lambda: box.router.state.verdict("comfy").state == "up",
                           what="comfy probed up at /system_stats")
            yield ComfyBox(box, app[standin.QUEUE], runner)
    finally:
        await runner.cleanup()


@pytest.fixture
async def comfy(tmp_path: Path) -> AsyncIterator[ComfyBox]:
    async with comfy_box(tmp_path) as running:
        yield running


def png_size_and_colour(data: bytes) -> tuple[int, int, bytes]:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", data[16:24])
    start = data.index(b"IDAT") + 4
    length = struct.unpack(">I", data[start - 8:start - 4])[0]
    pixels = zlib.decompress(data[start:start + length])
    return width, height, pixels[1:4]


async def test_images_generate_runs_the_workflow_with_the_request_in_its_nodes(
        comfy: ComfyBox) -> None:
    async with comfy.client() as api:
        raw = await api.images.with_raw_response.generate(
            model="creative", prompt="a red fox in snow", size="256x128",
            extra_body={"seed": 42, "negative_prompt": "blurry"})
        result = raw.parse()
    assert raw.headers["x-mushishi-backend"] == "comfy"
    assert raw.headers["x-mushishi-tier"] == "T1"
    assert result.data is not None and len(result.data) == 1
    width, height, rgb = png_size_and_colour(base64.b64decode(result.data[0].b64_json or ""))
    assert (width, height) == (256, 128)
    assert rgb == bytes(standin.colour(["a red fox in snow", "blurry"], 42))
    (entry,) = comfy.comfy["history"].values()
    graph = entry["prompt"][2]
    assert graph["6"]["inputs"]["text"] == "a red fox in snow"
    assert graph["7"]["inputs"]["text"] == "blurry"
    assert graph["3"]["inputs"]["seed"] == 42
    assert (graph["5"]["inputs"]["width"], graph["5"]["inputs"]["height"]) == (256, 128)
    assert graph["4"]["inputs"]["ckpt_name"] == "v1-5-pruned-emaonly.safetensors"  # untouched
    # The router followed the run on /ws under the client id it queued the prompt with.
    assert entry["prompt"][3]["client_id"] in comfy.comfy["clients"]


async def test_n_goes_into_the_batch_size_node_or_becomes_n_runs_with_seeds(
        comfy: ComfyBox) -> None:
    async with comfy.client() as api:
        batch = await api.images.generate(model="creative", prompt="fox", n=2, size="64x64",
                                          extra_body={"seed": 7})
        runs = await api.images.generate(model="creativeruns", prompt="fox", n=2,
                                         size="64x64", extra_body={"seed": 7})
    assert batch.data is not None and runs.data is not None
    colours = [png_size_and_colour(base64.b64decode(image.b64_json or ""))[2]
               for image in batch.data]
    assert colours == [bytes(standin.colour(["fox", "text, watermark"], 7))] * 2
    colours = [png_size_and_colour(base64.b64decode(image.b64_json or ""))[2]
               for image in runs.data]
    assert colours == [bytes(standin.colour(["fox", "text, watermark"], seed))
                       for seed in (7, 8)]
    sizes = [entry["prompt"][2]["5"]["inputs"]["batch_size"]
             for entry in comfy.comfy["history"].values()]
    assert sizes == [2, 1, 1]


async def test_response_format_url_is_served_by_the_router(comfy: ComfyBox) -> None:
    async with comfy.client() as api:
        result = await api.images.generate(model="creative", prompt="fox", size="32x32",
                                           response_format="url")
    assert result.data is not None and result.data[0].url
    url = result.data[0].url
    assert url.startswith(comfy.box.base_url + "/v1/images/files/")
    async with httpx.AsyncClient() as client:
        fetched = await client.get(url)
        missing = await client.get(comfy.box.base_url + "/v1/images/files/not-a-token")
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    assert png_size_and_colour(fetched.content)[:2] == (32, 32)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


async def test_a_failed_run_is_a_backend_failure_without_comfyui_words(
        comfy: ComfyBox) -> None:
    async with comfy.client() as api:
        with pytest.raises(openai.APIStatusError) as caught:
            await api.images.generate(model="creativefail", prompt="secret fox plans")
    error = caught.value.body
    assert isinstance(error, dict) and caught.value.status_code == 502
    assert error["code"] == "backend_failed"
    assert "execution_error in node 10 (StandinFail: RuntimeError)" in error["message"]
    assert "secret" not in error["message"]


async def test_a_bad_size_is_a_400_naming_the_field(comfy: ComfyBox) -> None:
    async with comfy.client() as api:
        with pytest.raises(openai.BadRequestError) as caught:
            await api.images.generate(model="creative", prompt="fox",
                                      size="big")  # type: ignore[arg-type]
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == "size"
    assert comfy.comfy["history"] == {}


async def test_comfyui_down_is_a_t1_queue_then_sovereign_backends_unavailable(
        comfy: ComfyBox) -> None:
    await comfy.runner.cleanup()
    await wait_for(lambda: comfy.box.router.state.verdict("comfy").state == "down",
                   what="comfy probed down")
    async with comfy.client() as api:
        with pytest.raises(openai.APIStatusError) as caught:
            await api.images.generate(model="creative", prompt="fox")
    error = caught.value.body
    assert caught.value.status_code == 503 and isinstance(error, dict)
    assert error["code"] == "sovereign_backends_unavailable" and "comfy" in error["message"]


def _queued(comfy: ComfyBox) -> list[str]:
    """The prompt ids ComfyUI is running or holding."""
    return [item[1] for item in comfy.comfy["running"] + comfy.comfy["pending"]]


async def test_a_run_past_the_backends_timeout_is_interrupted_not_left_on_the_gpu(
        comfy: ComfyBox) -> None:
    """The router gives up on a run after first_byte_timeout_s (2 s here): ComfyUI must not go
    on rendering an image nobody waits for, holding the GPU (and gpud's busy probe) for
    minutes. The running prompt is interrupted by its id (never whatever else runs)."""
    comfy.comfy["seconds"] = 60.0
    async with comfy.client() as api:
        with pytest.raises(openai.APIStatusError) as caught:
            await api.images.generate(model="creativeruns", prompt="fox", size="64x64")
    assert caught.value.status_code == 502 and "no images in 2s" in caught.value.message
    await wait_for(lambda: not _queued(comfy), within=5,
                   what="the abandoned run gone from ComfyUI's queue")
    (prompt_id,) = comfy.comfy["history"]
    assert comfy.comfy["interrupts"] == [prompt_id] and comfy.comfy["deleted"] == []
    status = comfy.comfy["history"][prompt_id]["status"]
    assert status["status_str"] == "error"
    assert [kind for kind, _ in status["messages"]][-1] == "execution_interrupted"


async def test_a_caller_that_hangs_up_leaves_no_run_behind_in_comfyui(
        comfy: ComfyBox) -> None:
    """Two callers give up (client timeout, 1 s; the backend would wait 60 s) while one run
    renders and the other waits in ComfyUI's queue: the waiting prompt is deleted from the
    queue, the running one is interrupted, and nothing of either is left for the GPU."""
    comfy.comfy["seconds"] = 60.0
    api = openai.AsyncOpenAI(base_url=comfy.box.openai_base, api_key=KEY, max_retries=0,
                             timeout=1.0)
    async with api:
        outcomes = await asyncio.gather(
            *(api.images.generate(model="creativelong", prompt=f"fox {n}", size="64x64")
              for n in range(2)), return_exceptions=True)
    assert all(isinstance(o, openai.APITimeoutError) for o in outcomes), outcomes
    await wait_for(lambda: not _queued(comfy), within=5,
                   what="both abandoned runs gone from ComfyUI's queue")
    assert len(comfy.comfy["interrupts"]) == 1 and comfy.comfy["interrupts"][0] is not None
    assert len(comfy.comfy["deleted"]) == 1
    # The deleted one never ran; the interrupted one ended as ComfyUI ends an interrupt.
    assert list(comfy.comfy["history"]) == comfy.comfy["interrupts"]


async def test_a_run_queued_whose_answer_never_came_back_is_taken_back_too(
        comfy: ComfyBox) -> None:
    """The caller hangs up after ComfyUI queued the run but before /prompt answered: the
    router named the run itself (`prompt_id`), so it still takes it back."""
    comfy.comfy["seconds"] = 60.0
    comfy.comfy["answer_delay"] = 3.0
    api = openai.AsyncOpenAI(base_url=comfy.box.openai_base, api_key=KEY, max_retries=0,
                             timeout=1.0)
    async with api:
        with pytest.raises(openai.APITimeoutError):
            await api.images.generate(model="creativelong", prompt="fox", size="64x64")
    await wait_for(lambda: not _queued(comfy), within=5,
                   what="the run whose /prompt answer was late gone from ComfyUI's queue")
    assert len(comfy.comfy["interrupts"]) == 1 and comfy.comfy["interrupts"][0] is not None
