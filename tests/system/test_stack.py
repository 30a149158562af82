"""The daemons together in one booted systemd: the real router follows the real gpud, and
the real CPU floor (llama-server on the tiny model) answers private work when the GPU is in
another mode. GPU tenants are the vLLM stand-in (no GPU here), run by the real tenant units.

The official openai client runs on the host inside the sandbox's network namespace.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.gpu_box import GpuBox, floor_config, gpu_modes_config

KEY = "sk-stack-test"
ALIAS = "nemotron-cpu-prism"

CLIENT = """
import json, sys
import openai
client = openai.OpenAI(base_url="http://127.0.0.1:4000/v1", api_key=sys.argv[1],
                       max_retries=0, timeout=60)
try:
    raw = client.chat.completions.with_raw_response.create(
        model=sys.argv[2], max_tokens=8,
        messages=[{"role": "user", "content": "Say something private."}])
except openai.APIStatusError as error:
    print(json.dumps({"status": error.status_code, "body": error.body,
                      "backend": error.response.headers.get("x-mushishi-backend")}))
    sys.exit(0)
completion = raw.parse()
print(json.dumps({"status": raw.http_response.status_code,
                  "backend": raw.headers.get("x-mushishi-backend"),
                  "tier": raw.headers.get("x-mushishi-tier"),
                  "model": completion.model,
                  "content": completion.choices[0].message.content,
                  "completion_tokens": completion.usage.completion_tokens}))
"""


def stack_config(llama_server: Path) -> str:
    """gpud's seed modes with stand-in tenants, the real floor, and the router over both."""
    # Both vLLM configs serve the same model, as on the seed box; the router checks the name.
    modes = gpu_modes_config().replace('"forensic-model"', '"nemotron-gpu"').replace(
        '"agent-model"', '"nemotron-gpu"')
    return modes + f"""
[router]
listen = ["127.0.0.1:4000", "unix:/run/mushishi/router.sock"]
probe_interval_s = 0.5

[backends.gpu]
url = "http://127.0.0.1:8000/v1"
model = "nemotron-gpu"
modes = ["forensic", "agent"]

[backends.cpu]
url = "http://127.0.0.1:8001/v1"
model = "{ALIAS}"

[profiles.private]
tier = "T1"
chain = ["gpu", "cpu"]
queue_timeout_s = 20

[profiles.client]
tier = "T1-strict"
chain = ["gpu"]
require_mode = "forensic"

[keys]
"{hashlib.sha256(KEY.encode()).hexdigest()}" = ["private", "client"]
""" + floor_config(llama_server, ALIAS)


@pytest.fixture(scope="module")
def stack(llama_server_binary: Path, tiny_model: Path) -> Iterator[GpuBox]:
    gpu = GpuBox.boot_with_floor(stack_config(llama_server_binary), tiny_model, "off")
    try:
        yield gpu
    finally:
        gpu.box.stop()


def ask(gpu: GpuBox, profile: str) -> dict:
    """One chat completion through the router with the official openai client."""
    return gpu.run_client(CLIENT, KEY, profile, timeout=120)


def wait_router_mode(gpu: GpuBox, mode: str) -> dict:
    deadline = time.monotonic() + 10
    status = gpu.router_status()
    while time.monotonic() < deadline:
        status = gpu.router_status()
        if status["gpu"]["active_mode"] == mode and status["backends"]["gpu"]["state"] == "up":
            return status
        time.sleep(0.2)
    raise AssertionError(f"the router did not see mode {mode} with the GPU backend up: {status}")


def test_private_work_gets_a_real_completion_from_the_cpu_floor_in_mode_off(
    stack: GpuBox,
) -> None:
    answer = ask(stack, "private")
    assert answer["status"] == 200, answer
    assert answer["backend"] == "cpu" and answer["tier"] == "T1"
    assert answer["completion_tokens"] > 0 and isinstance(answer["content"], str)
    # The GPU backend is out of mode: skipped on gpud's word, not probed and found "down".
    status = stack.router_status()
    assert status["gpu"] == {"present": True, "active_mode": "off", "state": "off",
                             "last_switch_reason": "manual"}  # systemctl isolate
    assert "skipped gpu" in status["profiles"]["private"]["reason"]
    assert "off" in status["profiles"]["private"]["reason"], status["profiles"]["private"]


def test_router_follows_a_switch_made_through_gpud_and_uses_the_gpu(stack: GpuBox) -> None:
    switched = stack.mushishi("mode", "agent")
    assert switched.returncode == 0, switched.stdout + switched.stderr
    wait_router_mode(stack, "agent")
    answer = ask(stack, "private")
    assert answer["status"] == 200 and answer["backend"] == "gpu", answer
    # The quality-locked profile needs forensic: a loud error, never a fallback.
    refused = ask(stack, "client")
    assert refused["status"] == 503, refused
    assert refused["body"]["code"] == "mode_mismatch" or \
        refused["body"].get("error", {}).get("code") == "mode_mismatch", refused


def test_client_profile_is_served_once_gpud_reaches_its_mode(stack: GpuBox) -> None:
    stack.box.systemctl("isolate", "mushishi-forensic.target", timeout=180)
    wait_router_mode(stack, "forensic")
    answer = ask(stack, "client")
    assert answer["status"] == 200 and answer["backend"] == "gpu", answer
    assert answer["tier"] == "T1-strict"


def test_watchdog_reads_the_real_router_gpud_and_floor(stack: GpuBox) -> None:
    """The watchdog's sources are the live daemons, not stand-ins: each check has its source."""
    box = stack.box
    box.systemctl("start", "mushishi-watchdog.service", timeout=300)
    result = json.loads(box.path("/var/lib/mushishi/watchdog/last.json").read_text())
    checks = {check["name"]: check for check in result["checks"]}
    for name in ("cpu-floor", "cloud-share", "gpu", "unit:mushishi-router.service",
                 "unit:mushishi-cpu-floor.service", "unit:mushishi-gpud.service"):
        assert checks[name]["status"] == "ok", checks[name]
    # No backup has run in this sandbox: reported as a problem or missing, never as healthy.
    assert checks["backup-result"]["status"] == "missing-source"
    assert checks["backup-age"]["status"] == "problem"
