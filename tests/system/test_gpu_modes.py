"""GPU modes in a real systemd: gpud, tenants, holds, drain, the VRAM guard, the stop-list.

Everything here is real except the GPU (a simulated JSON probe) and the tenants' servers
(stand-ins speaking vLLM's, ComfyUI's and a JSON gateway's wire formats): systemd 252 as
PID 1, its D-Bus API, the system dbus-daemon with the shipped policy, journald, the
shipped units rendered by `mushishi install`, the mushishi CLI, and the openai client.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator

import pytest

from devtools.sandbox import Sandbox
from mushishi.shared import dbus_names
from mushishi.shared.bus import BusError
from mushishi.shared.gpumode import GpuModeClient
from tests.paths import BINDIR
from tests.system.gpu_box import (
    DOCKER,
    GPU_STATE,
    MODE_TENANTS,
    MODES,
    PYTHON,
    TOTAL_MIB,
    GpuBox,
)

ALL_TENANTS = sorted({t for tenants in MODE_TENANTS.values() for t in tenants})
# The egress service is socket-activated: its socket is what stays up.
ALWAYS_ON = ("mushishi-router.service", "mushishi-cpu-floor.service", "mushishi-gpud.service",
             "mushishi-router.socket", "mushishi-egress.socket", "mushishi-watchdog.timer",
             "mushishi-backup.timer", "mushishi-backup-check.timer")
BUSCTL_PROPERTY = ["busctl", "--system", "get-property", dbus_names.BUS_NAME,
                   dbus_names.OBJECT_PATH, dbus_names.INTERFACE]
BUSCTL_CALL = ["busctl", "--system", "call", dbus_names.BUS_NAME, dbus_names.OBJECT_PATH,
               dbus_names.INTERFACE]

STREAM_CLIENT = """
import json, sys
import openai
client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused", max_retries=0)
stream = client.chat.completions.create(
    model=sys.argv[1], messages=[{"role": "user", "content": "analyse this"}], stream=True)
content, finish = "", None
for chunk in stream:
    if chunk.choices:
        content += chunk.choices[0].delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    print("chunk", flush=True)
print(json.dumps({"content": content, "finish_reason": finish}), flush=True)
"""


@pytest.fixture(scope="module")
def gpu_box() -> Iterator[GpuBox]:
    box = Sandbox()
    box.boot()
    try:
        gpu = GpuBox(box)
        gpu.setup()
        yield gpu
    finally:
        box.stop()


@pytest.fixture
def settled(gpu_box: GpuBox) -> Iterator[GpuBox]:
    """An idle GPU before and after the test; back to mode off afterwards."""
    gpu_box.set_gpu()
    yield gpu_box
    gpu_box.set_gpu()
    gpu_box.isolate("off")


def invocations(box: Sandbox, units: tuple[str, ...]) -> dict[str, str]:
    """InvocationID of each unit: it changes whenever the unit is restarted."""
    return {unit: box.systemctl("show", "-p", "InvocationID", "--value", unit).stdout.strip()
            for unit in units}


def active_enter(box: Sandbox, unit: str) -> float:
    """When the unit last became active, in CLOCK_MONOTONIC seconds (shared with the host)."""
    usec = box.systemctl("show", "-p", "ActiveEnterTimestampMonotonic", "--value", unit).stdout
    return int(usec.strip()) / 1e6


async def mode_changed(box: Sandbox, client: GpuModeClient, new: str, timeout: float = 120.0
                       ) -> tuple[str, float]:
    """Wait for ModeChanged(old, new); (old, monotonic time it arrived)."""
    seen = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                kind, value = await client.events.get()
                seen.append((kind, value))
                if kind == "ModeChanged" and value[1] == new:
                    return value[0], time.monotonic()
    except TimeoutError:
        journal = box.journal("-u", "mushishi-gpud.service", "-u", "mushishi-tenant@*",
                              "-u", "mushishi-gpu-prepare@*", "-n", "80")
        raise AssertionError(f"no ModeChanged to {new}; signals: {seen}\n{journal}") from None


def assert_mode_units(box: Sandbox, mode: str) -> None:
    assert box.is_active(f"mushishi-{mode}.target") == "active"
    for other in MODES:
        if other != mode:
            assert box.is_active(f"mushishi-{other}.target") == "inactive", other
    for tenant in ALL_TENANTS:
        expected = "active" if tenant in MODE_TENANTS[mode] else "inactive"
        assert box.is_active(f"mushishi-tenant@{tenant}.service") == expected, (
            f"in mode {mode}, tenant {tenant} should be {expected}")


@pytest.mark.parametrize(("how", "mode"), [(how, mode) for how in ("isolate", "SwitchMode")
                                           for mode in MODES])
async def test_switch_mode_keeps_always_on_stops_other_tenants_and_signals_within_1s(
        settled: GpuBox, how: str, mode: str) -> None:
    box = settled.box
    client = await settled.client()
    try:
        if await client.get("ActiveMode") == mode:
            settled.isolate("forensic" if mode == "off" else "off")
        before = invocations(box, ALWAYS_ON)
        await client.watch()
        if how == "isolate":
            await asyncio.to_thread(box.systemctl, "isolate", f"mushishi-{mode}.target",
                                    timeout=180)
        else:
            await client.switch(mode, False)
        _old, arrived = await mode_changed(box, client, mode)
        lag = arrived - active_enter(box, f"mushishi-{mode}.target")
        assert lag <= 1.0, f"ModeChanged came {lag:.3f} s after the target was reached"
        props = await client.properties()
        assert props.active_mode == mode
        assert props.state == ("off" if mode == "off" else "ready")
        assert props.state_reason == ""
    finally:
        client.close()
    assert_mode_units(box, mode)
    assert invocations(box, ALWAYS_ON) == before, "an always-on unit was restarted"
    for unit in ALWAYS_ON:
        assert box.is_active(unit) == "active", unit
    if mode in ("forensic", "agent"):  # the mode's power limit was set for its tenants
        expected = {"forensic": 450, "agent": 400}[mode]
        assert json.loads(box.path(GPU_STATE).read_text())["power_limit_w"] == expected


@pytest.mark.parametrize("how", ["SwitchMode", "isolate"])
async def test_vram_guard_with_too_little_free_memory_fails_tenant_and_switch(
        settled: GpuBox, how: str) -> None:
    box = settled.box
    stray = settled.start_stray("comfy-stray", f"stray-{how.lower()}")
    settled.set_gpu(used_mib=20500, processes=[
        {"pid": stray, "name": "comfy-stray", "used_mib": 20000}])
    before = invocations(box, ALWAYS_ON)
    client = await settled.client()
    try:
        await client.watch()
        if how == "SwitchMode":
            await client.switch("forensic", False)
        else:
            await asyncio.to_thread(box.systemctl, "isolate", "mushishi-forensic.target",
                                    timeout=180)
        async with asyncio.timeout(60):
            outcome = await client.wait_switch("forensic")
        props = await client.properties()
    finally:
        client.close()
    assert not outcome.ok
    assert props.state == "failed"
    assert "tenant vllm-forensic failed" in props.state_reason
    assert "does not fit" in props.state_reason
    assert box.is_active("mushishi-tenant@vllm-forensic.service") == "failed"
    (invocation,) = invocations(box, ("mushishi-tenant@vllm-forensic.service",)).values()
    journal = box.journal(f"_SYSTEMD_INVOCATION_ID={invocation}", "-o", "cat")
    free = TOTAL_MIB - 20500
    line = (f"tenant vllm-forensic does not fit: needs 28000 MiB of VRAM, {free} MiB free "
            f"of {TOTAL_MIB} MiB; held by: comfy-stray (pid {stray}, 20000 MiB, "
            "not in stop-list); 500 MiB not attributed to a process")
    assert line in journal.splitlines(), journal
    # The tenant's command never ran, the CPU floor and router were not touched, and the
    # process holding the memory (not in the stop-list) was left alone.
    assert "vllm stand-in serving" not in journal
    assert invocations(box, ALWAYS_ON) == before
    assert box.is_active(f"stray-{how.lower()}.service") == "active"
    box.systemctl("stop", f"stray-{how.lower()}.service")
    box.systemctl("reset-failed", "mushishi-tenant@vllm-forensic.service")


def _start_stream(box: Sandbox, model: str) -> subprocess.Popen[str]:
    return subprocess.Popen(box.net_command([PYTHON, "-c", STREAM_CLIENT, model]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_running(gpu: GpuBox, port: int, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gpu.http("GET", f"http://127.0.0.1:{port}/standin/state")["running"] == count:
            return
        time.sleep(0.1)
    raise AssertionError(f"the stand-in never had {count} request(s) running")


async def test_busy_tenant_refuses_switch_and_forced_switch_drains_streamed_request(
        settled: GpuBox) -> None:
    box = settled.box
    settled.isolate("forensic")
    (invocation,) = invocations(box, ("mushishi-tenant@vllm-forensic.service",)).values()
    settled.http("POST", "http://127.0.0.1:8000/standin/hold")
    stream = _start_stream(box, "forensic-model")
    try:
        _wait_running(settled, 8000, 1)
        client = await settled.client()
        try:
            assert await client.busy() == [
                "vllm-forensic: 1 request(s) running, 0 waiting (vLLM)"]
            with pytest.raises(BusError) as refused:
                await client.switch("creative", False)
            assert refused.value.name == dbus_names.ERROR_BUSY
            assert "vllm-forensic: 1 request(s) running" in refused.value.text
            assert await client.get("ActiveMode") == "forensic"
            assert box.is_active("mushishi-tenant@vllm-forensic.service") == "active"

            await client.watch()
            await client.switch("creative", True)
            box.wait_for("mushishi-tenant@vllm-forensic.service", "deactivating", timeout=30)
            await asyncio.sleep(1.5)  # the drain waits; the held request is still running
            assert box.is_active("mushishi-tenant@vllm-forensic.service") == "deactivating"
            assert "draining" in (await client.get("Progress"))
            assert stream.poll() is None
            settled.http("POST", "http://127.0.0.1:8000/standin/release")
            async with asyncio.timeout(120):
                outcome = await client.wait_switch("creative")
            assert outcome.ok, outcome.reason
        finally:
            client.close()
        out, err = stream.communicate(timeout=30)
    finally:
        if stream.poll() is None:
            stream.kill()
    assert stream.returncode == 0, err
    result = json.loads(out.splitlines()[-1])
    assert result == {"content": " ".join(f"word{i}" for i in range(12)) + " ",
                      "finish_reason": "stop"}
    journal = box.journal(f"_SYSTEMD_INVOCATION_ID={invocation}", "-o", "cat")
    assert "tenant vllm-forensic drained after" in journal
    assert journal.index("completed chatcmpl-") < journal.index("drained after")
    assert_mode_units(box, "creative")


def _holder_pids(box: Sandbox) -> list[str]:
    found = box.run(["pgrep", "-f", "mushishi hold forensic"], check=False).stdout
    return found.split()


async def test_hold_blocks_switch_until_its_holder_dies(settled: GpuBox) -> None:
    box = settled.box
    settled.isolate("forensic")
    holder = subprocess.Popen(
        ["/usr/bin/nsenter", "-t", str(box.pid), "-a", "--", f"{BINDIR}/mushishi", "hold",
         "forensic", "--reason", "client report", "--", "sleep", "600"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = await settled.client()
    try:
        deadline = time.monotonic() + 30
        while not await client.get("Holds"):
            assert time.monotonic() < deadline, holder.stderr.read() if holder.poll() else ""
            await asyncio.sleep(0.1)
        (held,) = await client.get("Holds")
        assert held[0] == "forensic" and held[1].startswith("mushishi hold: sleep 600")
        assert held[2] == "client report"
        with pytest.raises(BusError) as refused:
            await client.switch("creative", False)
        assert refused.value.name == dbus_names.ERROR_HELD
        assert "client report" in refused.value.text

        (pid,) = _holder_pids(box)
        box.run(["kill", "-KILL", pid])
        deadline = time.monotonic() + 10
        while await client.get("Holds"):
            assert time.monotonic() < deadline, "the hold outlived its holder"
            await asyncio.sleep(0.05)
        await client.watch()
        await client.switch("creative", False)
        async with asyncio.timeout(120):
            assert (await client.wait_switch("creative")).ok
    finally:
        client.close()
        holder.kill()
        holder.wait()
        box.run(["pkill", "-f", "sleep 600"], check=False)
    journal = box.journal("-u", "mushishi-gpud.service", "-o", "cat")
    assert "released: its holder left the bus" in journal


async def test_hold_then_switches_after_the_job(settled: GpuBox) -> None:
    client = await settled.client()
    try:
        await client.watch()
        job = " ".join([*BUSCTL_PROPERTY, "Holds"])
        result = await asyncio.to_thread(
            settled.mushishi, "hold", "forensic", "--then", "creative", "--reason", "report",
            "--", "sh", "-c", f"{job} && echo job-done")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[-1] == "job-done"
        # During the job, forensic was active and held by this very command.
        assert lines[0].startswith('a(sss) 1 "forensic" "mushishi hold: sh -c')
        assert lines[0].endswith('"report"')
        changes = []
        while not client.events.empty():
            kind, value = client.events.get_nowait()
            if kind == "ModeChanged":
                changes.append(tuple(value))
        assert changes == [("off", "forensic"), ("forensic", "creative")]
        props = await client.properties()
        assert props.active_mode == "creative" and props.holds == ()
        assert props.last_switch_reason == "hold-then"  # the first switch was `manual`
        assert "last switch: hold-then" in settled.mushishi("status").stdout
    finally:
        client.close()


def test_unprivileged_user_reads_properties_but_cannot_switch(settled: GpuBox) -> None:
    box = settled.box
    if box.run(["id", "viewer"], check=False).returncode != 0:
        box.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "viewer"])
    read = box.run([*BUSCTL_PROPERTY, "ActiveMode"], user="viewer", check=False)
    assert read.returncode == 0 and read.stdout.strip() == 's "off"', read.stderr
    shown = settled.mushishi("mode", user="viewer")
    assert shown.returncode == 0 and shown.stdout.startswith("mode:   off (off)")
    denied = box.run([*BUSCTL_CALL, "SwitchMode", "sb", "agent", "false"], user="viewer",
                     check=False)
    assert denied.returncode != 0
    assert "Access denied" in denied.stderr
    cli = settled.mushishi("mode", "agent", user="viewer")
    assert cli.returncode == 77
    assert "not allowed: only root and members of group mushishi" in cli.stderr
    for method in (["HoldMode", "sss", "off", "me", "x"], ["Busy"]):
        assert box.run([*BUSCTL_CALL, *method], user="viewer", check=False).returncode != 0
    # Members of group mushishi may call methods.
    allowed = box.run([*BUSCTL_CALL, "Busy"], user="mushishi", check=False)
    assert allowed.returncode == 0 and allowed.stdout.strip() == "as 0", allowed.stderr
    assert box.is_active("mushishi-off.target") == "active"


async def test_stop_list_frees_memory_and_never_touches_anything_else(settled: GpuBox) -> None:
    box = settled.box
    ollama = settled.start_stray("ollama", "stray-ollama")
    comfy = settled.start_stray("comfy-stray", "stray-comfy")
    containers = settled.start_docker(["ollama-box", "keep-me"])
    try:
        settled.set_gpu(used_mib=21500, processes=[
            {"pid": ollama, "name": "ollama", "used_mib": 12000},
            {"pid": comfy, "name": "comfy-stray", "used_mib": 2000},
            {"pid": containers["ollama-box"], "name": "ollama-runner", "used_mib": 6000},
            {"pid": containers["keep-me"], "name": "keeper", "used_mib": 1000}])
        client = await settled.client()
        try:
            await client.watch()
            await client.switch("forensic", False)
            async with asyncio.timeout(120):
                outcome = await client.wait_switch("forensic")
        finally:
            client.close()
        assert outcome.ok, outcome.reason
        # In the stop-list: the ollama process and the ollama-box container (whose process
        # held 6000 MiB) were stopped, the container through the real dockerd.
        assert box.is_active("stray-ollama.service") in ("inactive", "failed")
        assert not settled.container_running("ollama-box")
        # Not in the stop-list: never touched.
        assert box.is_active("stray-comfy.service") == "active"
        assert settled.container_running("keep-me")
        journal = box.journal("-u", "mushishi-gpu-prepare@forensic.service", "-o", "cat")
        assert "comfy-stray (pid" in journal and "not in stop-list" in journal
        assert f"sent SIGTERM to ollama (pid {ollama}, 12000 MiB) from the stop-list" in journal
        assert "stopped container ollama-box" in journal
    finally:
        box.systemctl("stop", "stray-comfy.service", check=False)
        box.run([DOCKER, "rm", "-f", "ollama-box", "keep-me"], check=False)


async def test_gpu_properties_and_metrics_follow_the_simulated_gpu(settled: GpuBox) -> None:
    settled.set_gpu(used_mib=1234, util_percent=37, temperature_c=71, power_w=212.5,
                    throttle_reasons=["sw-thermal-slowdown"])
    client = await settled.client()
    try:
        deadline = time.monotonic() + 10
        while (props := await client.properties()).vram_used_mib != 1234:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
    finally:
        client.close()
    assert props.vram_total_mib == TOTAL_MIB
    assert props.util_percent == 37
    assert props.temperature_c == 71
    assert props.power_w == 212.5
    assert props.throttled is True
    code = ("import urllib.request;print(urllib.request.urlopen("
            "'http://127.0.0.1:9642/metrics').read().decode())")
    metrics = settled.box.run([PYTHON, "-c", code]).stdout
    assert "mushishi_gpud_vram_used_bytes 1.293942784e+09" in metrics
    assert 'mushishi_gpud_mode_active{mode="off"} 1.0' in metrics
    assert 'mushishi_gpud_state{state="off"} 1.0' in metrics
    assert "mushishi_gpud_gpu_temperature_celsius 71.0" in metrics
    assert "mushishi_gpud_gpu_throttled 1.0" in metrics
    assert 'mushishi_gpud_switches_total{origin="api",result="ok"}' in metrics
    assert 'mushishi_gpud_switch_phase_seconds_count{phase="call_to_isolate"}' in metrics


def test_mode_cli_on_a_terminal_shows_progress_and_plain_output_does_not(
        settled: GpuBox) -> None:
    box = settled.box
    tty = box.run(["script", "--quiet", "--return", "--command",
                   f"{BINDIR}/mushishi mode creative", "/dev/null"], timeout=300)
    lines = [line.strip() for line in tty.stdout.replace("\r", "").splitlines() if line]
    progress = [line for line in lines if line.startswith("[")]
    assert progress, lines
    assert all("switching to creative" in line for line in progress)
    assert any("mushishi-tenant@comfyui.service" in line for line in progress)
    assert lines[-1].startswith("mode creative ready (")
    plain = settled.mushishi("mode", "forensic")
    assert plain.returncode == 0
    assert plain.stdout.splitlines() == [plain.stdout.strip()]
    assert plain.stdout.startswith("mode forensic ready (")


async def test_reload_adopts_a_mode_added_to_the_config(settled: GpuBox) -> None:
    box = settled.box
    original = box.path("/etc/mushishi/mushishi.toml").read_text()
    coding = original + '\n[modes.coding]\ndescription = "Qwen3-Coder"\ntenants = ["vllm-agent"]\n'
    try:
        box.install(coding)
        box.systemctl("reload", "mushishi-gpud.service")
        client = await settled.client()
        try:
            deadline = time.monotonic() + 10
            while "coding" not in await client.get("Modes"):
                assert time.monotonic() < deadline, "gpud did not reload its modes"
                await asyncio.sleep(0.1)
            await client.watch()
            await client.switch("coding", False)
            async with asyncio.timeout(120):
                assert (await client.wait_switch("coding")).ok
        finally:
            client.close()
        assert box.is_active("mushishi-tenant@vllm-agent.service") == "active"
        assert box.is_active("mushishi-tenant@tts.service") == "inactive"
    finally:
        settled.isolate("off")
        box.install(original)
        box.systemctl("reload", "mushishi-gpud.service")


async def test_tenant_crashing_after_the_switch_turns_state_failed(settled: GpuBox) -> None:
    box = settled.box
    settled.isolate("creative")
    client = await settled.client()
    try:
        await client.watch()
        # The stand-in ComfyUI dies on its own (not a stop): its runner exits non-zero.
        box.run(["pkill", "-KILL", "-f", "tests/standins/comfyui.py"])
        async with asyncio.timeout(30):
            while (await client.get("State")) != "failed":
                await client.events.get()
        reason = await client.get("StateReason")
        assert reason.startswith("tenant comfyui failed (exit-code)")
        assert await client.get("ActiveMode") == "creative"
    finally:
        client.close()
    box.systemctl("reset-failed", "mushishi-tenant@comfyui.service")
