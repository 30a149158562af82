"""Modes that follow the work (issue 15 items 6-7) in a booted systemd: the real router asks
the real gpud for a profile's mode, which isolates the real mode targets; a creative tenant
that takes 7 s to become healthy (the vLLM stand-in, loading) answers the very request that
asked for it, streamed with waiting comments; a second profile within the dwell time does
not switch back (T2: its next hop, the real CPU floor on the tiny model); the idle return
brings the box back to `agent`, CPU-floor work notwithstanding.

The official openai client runs on the host inside the sandbox's network namespace, through
an httpx transport that also keeps the raw bytes, so the test sees the comments the SDK
ignored.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.gpu_box import STANDINS, GpuBox, floor_config, gpu_modes_config

KEY = "sk-modes-test"
ALIAS = "nemotron-cpu-prism"
IDLE_AFTER_S = 20
LOAD_SECONDS = 7

CLIENT = """
import json, sys, time
import httpx2 as httpx, openai

raw = []

class Tee(httpx.HTTPTransport):
    def handle_request(self, request):
        response = super().handle_request(request)
        inner = response.stream

        class Stream(httpx.SyncByteStream):
            def __iter__(self):
                for chunk in inner:
                    raw.append(chunk)
                    yield chunk

            def close(self):
                inner.close()

        return httpx.Response(response.status_code, headers=response.headers,
                              stream=Stream(), extensions=response.extensions,
                              request=request)

client = openai.OpenAI(base_url="http://127.0.0.1:4000/v1", api_key=sys.argv[1],
                       max_retries=0, timeout=120, http_client=httpx.Client(transport=Tee()))
started = time.monotonic()
try:
    with client.chat.completions.with_streaming_response.create(
            model=sys.argv[2], messages=[{"role": "user", "content": "draw me a cat"}],
            stream=True) as response:
        headers = dict(response.headers)
        content = ""
        for chunk in response.parse():
            if chunk.choices:
                content += chunk.choices[0].delta.content or ""
    outcome = {"status": 200, "content": content}
except openai.APIError as error:
    outcome = {"status": getattr(error, "status_code", None), "error": str(error)}
    headers = {}
outcome.update(backend=headers.get("x-mushishi-backend"), seconds=time.monotonic() - started,
               raw=b"".join(raw).decode())
print(json.dumps(outcome))
"""


def stack_config(llama_server: Path) -> str:
    """gpud's seed modes with stand-in tenants, plus `creativechat` (a vLLM stand-in that
    loads for LOAD_SECONDS) in creative; the real floor; the router over all of them."""
    modes = gpu_modes_config().replace('"forensic-model"', '"nemotron-gpu"').replace(
        '"agent-model"', '"nemotron-gpu"').replace(
        'tenants = ["comfyui"]', 'tenants = ["comfyui", "creativechat"]').replace(
        "[modes.forensic]", f"""[modes]
idle_mode = "agent"
idle_after_s = {IDLE_AFTER_S}
min_mode_dwell_s = 600

[modes.forensic]""", 1)
    vllm = json.dumps([sys.executable, str(STANDINS / "vllm_gpu.py"), "--port", "8002",
                       "--model", "creative-model", "--load-seconds", str(LOAD_SECONDS)])
    return modes + f"""
[tenants.creativechat]
command = {vllm}
health_url = "http://127.0.0.1:8002/v1/models"
busy_probe = {{ kind = "vllm", url = "http://127.0.0.1:8002/metrics" }}
vram_mib = 4000
port = 8002
stop_timeout_s = 10

[router]
listen = ["127.0.0.1:4000", "unix:/run/mushishi/router.sock"]
probe_interval_s = 0.5
wait_feedback_s = 2

[backends.gpu]
url = "http://127.0.0.1:8000/v1"
model = "nemotron-gpu"
modes = ["agent", "forensic"]

[backends.creativechat]
url = "http://127.0.0.1:8002/v1"
model = "creative-model"
modes = ["creative"]

[backends.cpu]
url = "http://127.0.0.1:8001/v1"
model = "{ALIAS}"

[profiles.artist]
tier = "T1-strict"
chain = ["creativechat"]
require_mode = "creative"
on_mode_mismatch = "switch"
queue_timeout_s = 90

[profiles.coder]
tier = "T2"
chain = ["gpu", "cpu"]
on_mode_mismatch = "switch"
queue_timeout_s = 60

[profiles.private]
tier = "T1"
chain = ["gpu", "cpu"]
queue_timeout_s = 20

[keys]
"{hashlib.sha256(KEY.encode()).hexdigest()}" = ["artist", "coder", "private"]
""" + floor_config(llama_server, ALIAS)


@pytest.fixture(scope="module")
def stack(llama_server_binary: Path, tiny_model: Path) -> Iterator[GpuBox]:
    gpu = GpuBox.boot_with_floor(stack_config(llama_server_binary), tiny_model, "agent")
    try:
        # A router that starts in agent has seen no switch: no dwell time holds it yet.
        gpu.box.systemctl("restart", "mushishi-router.service", timeout=120)
        gpu.box.wait_for("mushishi-router.service", "active", timeout=120)
        yield gpu
    finally:
        gpu.box.stop()


def ask(gpu: GpuBox, profile: str) -> dict:
    """One streamed chat completion through the router with the official openai client."""
    return gpu.run_client(CLIENT, KEY, profile, timeout=180)


def last_switch_reason(gpu: GpuBox) -> str:
    out = gpu.box.run(["busctl", "--system", "get-property", "io.mushishi.GpuMode1",
                       "/io/mushishi/GpuMode1", "io.mushishi.GpuMode1",
                       "LastSwitchReason"]).stdout
    return json.loads(out.split(" ", 1)[1])


def wait_until(condition, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_a_request_switches_the_mode_streams_waiting_comments_and_is_answered(
    stack: GpuBox,
) -> None:
    status = stack.router_status()
    assert status["gpu"]["active_mode"] == "agent", status["gpu"]
    assert "would ask gpud to switch" in status["profiles"]["artist"]["reason"]
    answer = ask(stack, "artist")
    assert answer["status"] == 200, answer
    # The very request that asked for the switch is answered by the tenant that took 7 s.
    assert answer["content"].split() == [f"word{i}" for i in range(8)], answer
    assert answer["seconds"] >= LOAD_SECONDS
    frames = answer["raw"].split("\n\n")
    waiting = [frame for frame in frames if frame.startswith(": waiting for ")]
    assert len(waiting) >= 2, answer["raw"][:600]
    assert any(frame.startswith(": waiting for mode creative, ") for frame in waiting)
    assert ": backend creativechat" in frames
    assert answer["backend"] == "pending"  # the headers went out with the first comment
    assert stack.gpud_state() == ("creative", "ready")
    assert last_switch_reason(stack) == "request:profile=artist"
    assert stack.router_status()["gpu"]["last_switch_reason"] == "request:profile=artist"
    report = json.loads(stack.mushishi("status", "--json").stdout)
    assert report["gpu"]["last_switch_reason"] == "request:profile=artist"
    screen = stack.mushishi("status").stdout
    assert "last switch: request:profile=artist" in screen, screen


def test_a_second_profile_within_the_dwell_time_takes_its_next_hop(stack: GpuBox) -> None:
    answer = ask(stack, "coder")
    assert answer["status"] == 200 and answer["backend"] == "cpu", answer
    assert stack.gpud_state() == ("creative", "ready")
    assert last_switch_reason(stack) == "request:profile=artist"
    journal = stack.box.journal("-u", "mushishi-router.service", "-n", "200")
    assert "became active less than 600s ago (modes.min_mode_dwell_s)" in journal, \
        journal[-2000:]


def test_idle_mode_returns_the_box_after_idle_after_s(stack: GpuBox) -> None:
    # CPU-floor work is not GPU work: it goes on while the box returns to agent.
    answer = ask(stack, "private")
    assert answer["status"] == 200 and answer["backend"] == "cpu", answer
    try:
        wait_until(lambda: stack.gpud_state() == ("agent", "ready"),
                   "the idle return to agent", timeout=IDLE_AFTER_S + 90)
    except AssertionError:
        journal = stack.box.journal("-u", "mushishi-router.service", "-u",
                                    "mushishi-gpud.service", "-n", "60")
        raise AssertionError(f"no idle return: {stack.router_status()['gpu']}\n{journal}"
                             ) from None
    assert last_switch_reason(stack) == "idle"
    journal = stack.box.journal("-u", "mushishi-router.service", "-n", "200")
    assert f"no GPU work for {IDLE_AFTER_S}s: returning to idle mode agent" in journal
    wait_until(lambda: stack.router_status()["gpu"]["last_switch_reason"] == "idle",
               "the router following LastSwitchReason", timeout=10)
