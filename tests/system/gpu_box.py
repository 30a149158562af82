"""A booted systemd set up for GPU-mode tests: simulated GPU, stand-in tenants, gpud.

Tenants are the stand-ins under tests/standins/ run by the real mushishi-tenant@.service
(guard, runner, drain), gpud is the real mushishi-gpud.service on the sandbox's system
bus, and the test process talks to that bus directly through /proc/<pid>/root. Containers
for the stop-list run under Debian's own dockerd.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from devtools.sandbox import Sandbox
from mushishi.shared.gpumode import GpuModeClient
from tests.paths import BINDIR, REPO
from tests.system.stack import TINY_MODEL, copy_tiny_model

PYTHON = str(Path(sys.executable))
STANDINS = REPO / "tests" / "standins"
# Debian's own CLI and a busybox image built locally (no registry).
DOCKER = "/usr/bin/docker"
DOCKER_IMAGE = "mushishi-busybox:test"
BUSYBOX_IMAGE = f"""
set -e
root=$(mktemp -d)
mkdir -p "$root/bin"
cp /bin/busybox "$root/bin/busybox"
ln -s busybox "$root/bin/sleep"
tar -C "$root" -c . | {DOCKER} import - {DOCKER_IMAGE} >/dev/null
"""
GPU_STATE = "/run/mushishi/gpu-sim.json"
MODES = ("forensic", "agent", "creative", "audio", "off")
# The tenants of each mode, as configured below.
MODE_TENANTS = {"forensic": ["vllm-forensic"], "agent": ["vllm-agent", "tts"],
                "creative": ["comfyui"], "audio": ["audio"], "off": []}
TOTAL_MIB = 32607
IDLE_GPU: dict[str, Any] = {"total_mib": TOTAL_MIB, "used_mib": 500, "util_percent": 0,
                            "temperature_c": 40, "power_w": 20.0, "processes": []}
# Always-on units stand in for the router, egress and CPU floor (other issues' daemons).
ALWAYS_ON_STANDINS = ("mushishi-router.service", "mushishi-egress.service",
                      "mushishi-cpu-floor.service")


def _argv(*parts: str) -> str:
    return json.dumps([PYTHON, *parts])


def gpu_modes_config(*, drain_timeout_s: float = 60.0, extra_gpu: str = "") -> str:
    """The seed box's modes, with stand-ins for vLLM, ComfyUI and the audio gateways."""
    vllm = str(STANDINS / "vllm_gpu.py")
    return f"""
[gpu]
probe = "simulated"
simulated_state = "{GPU_STATE}"
stop_list = ["ollama", "ollama-box"]
poll_interval_s = 1.0
util_sample_s = 0.4
free_wait_s = 10
{extra_gpu}

[modes.forensic]
description = "vLLM, 180K context"
tenants = ["vllm-forensic"]
power_limit_w = 450

[modes.agent]
description = "light vLLM and a TTS tenant"
tenants = ["vllm-agent", "tts"]
power_limit_w = 400

[modes.creative]
tenants = ["comfyui"]

[modes.audio]
tenants = ["audio"]

[modes.off]
tenants = []

[tenants.vllm-forensic]
command = {_argv(vllm, "--port", "8000", "--model", "forensic-model", "--tokens", "12")}
health_url = "http://127.0.0.1:8000/v1/models"
busy_probe = {{ kind = "vllm", url = "http://127.0.0.1:8000/metrics" }}
vram_mib = 28000
port = 8000
drain_timeout_s = {drain_timeout_s}
stop_timeout_s = 10

[tenants.vllm-agent]
command = {_argv(vllm, "--port", "8000", "--model", "agent-model")}
health_url = "http://127.0.0.1:8000/v1/models"
busy_probe = {{ kind = "vllm", url = "http://127.0.0.1:8000/metrics" }}
vram_mib = 22000
port = 8000
drain_timeout_s = {drain_timeout_s}
stop_timeout_s = 10

[tenants.tts]
command = {_argv(str(STANDINS / "json_queue.py"), "--port", "9001")}
health_url = "http://127.0.0.1:9001/health"
busy_probe = {{ kind = "json", url = "http://127.0.0.1:9001/queue", json_path = "in_flight" }}
vram_mib = 6000
port = 9001
stop_timeout_s = 10

[tenants.comfyui]
command = {_argv(str(STANDINS / "comfyui.py"), "--port", "8188")}
health_url = "http://127.0.0.1:8188/system_stats"
busy_probe = {{ kind = "comfyui", url = "http://127.0.0.1:8188/queue" }}
vram_mib = 24000
port = 8188
stop_timeout_s = 10

[tenants.audio]
command = {_argv(str(STANDINS / "json_queue.py"), "--port", "9000")}
health_url = "http://127.0.0.1:9000/health"
vram_mib = 16000
port = 9000
stop_timeout_s = 10
"""


def floor_config(llama_server: Path | str, alias: str) -> str:
    """A [cpu_floor] table: the real llama-server on the tiny model, as small as it runs."""
    return f"""
[cpu_floor]
llama_server = "{llama_server}"
model = "{TINY_MODEL}"
alias = "{alias}"
threads = 1
ctx_size = 512
mlock = false
"""


class GpuBox:
    """A sandbox with mushishi installed from `gpu_modes_config()` and gpud running."""

    def __init__(self, box: Sandbox) -> None:
        self.box = box

    @classmethod
    def boot_with_floor(cls, config: str, tiny_model: Path, mode: str,
                        containers: Sequence[str] = ()) -> GpuBox:
        """A booted sandbox with `config` installed (tenants, the real CPU floor on the tiny
        model, the router), dockerd with `containers`, gpud, the floor and the router active
        and the box isolated to `mode`."""
        box = Sandbox()
        box.boot()
        gpu = cls(box)
        try:
            box.add_default_route()
            copy_tiny_model(box, tiny_model)
            gpu.set_gpu()
            box.install(config)
            gpu.start_docker(containers)
            box.systemctl("start", "mushishi.target")
            for unit in ("mushishi-gpud.service", "mushishi-cpu-floor.service",
                         "mushishi-router.service"):
                box.wait_for(unit, "active", timeout=120)
            gpu.isolate(mode)
        except BaseException:
            box.stop()
            raise
        return gpu

    def router_status(self) -> dict[str, Any]:
        """The router's /status, over its unix socket."""
        return json.loads(self.box.run(
            ["curl", "-sS", "--fail", "--unix-socket", "/run/mushishi/router.sock",
             "http://router/status"]).stdout)

    def run_client(self, script: str, *args: str, timeout: float) -> dict[str, Any]:
        """A Python client `script` (with `args`) run on the host in the sandbox's network
        namespace; the JSON object it prints last."""
        argv = self.box.net_command([sys.executable, "-c", script, *args])
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                                check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        answer: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        return answer

    @property
    def bus_address(self) -> str:
        """The sandbox's system bus, reachable from this (host) process as root."""
        return f"unix:path={self.box.path('/run/dbus/system_bus_socket')}"

    async def client(self) -> GpuModeClient:
        """A connection to the sandbox's system bus."""
        return await GpuModeClient.connect(self.bus_address)

    def set_gpu(self, **fields: Any) -> None:
        """Rewrite the simulated GPU (fields over an idle GPU)."""
        state = {**IDLE_GPU, **fields}
        self.box.write(GPU_STATE, json.dumps(state))

    def setup(self, config: str | None = None) -> None:
        """Install, stand in for the other issues' always-on daemons, start gpud in off."""
        box = self.box
        self.set_gpu()
        box.install(config or gpu_modes_config())
        for unit in ALWAYS_ON_STANDINS:
            box.write(f"/etc/systemd/system/{unit}.d/zz-standin.conf",
                      "[Service]\nType=simple\nWatchdogSec=0\nExecStartPre=\nExecStartPost=\n"
                      "ExecStart=\nExecStart=/bin/sleep infinity\n")
        box.systemctl("daemon-reload")
        self.start_docker()
        box.systemctl("start", "mushishi.target")
        box.wait_for("mushishi-gpud.service", "active", timeout=60)
        self.isolate("off")

    def gpud_state(self) -> tuple[str, str]:
        """(ActiveMode, State) as gpud shows them."""
        values = []
        for name in ("ActiveMode", "State"):
            out = self.box.run(["busctl", "--system", "get-property", "io.mushishi.GpuMode1",
                                "/io/mushishi/GpuMode1", "io.mushishi.GpuMode1", name]).stdout
            values.append(json.loads(out.split(" ", 1)[1]))
        return values[0], values[1]

    def isolate(self, mode: str, timeout: float = 180) -> None:
        """`systemctl isolate mushishi-MODE.target`, then wait until gpud has settled on it."""
        self.box.systemctl("isolate", f"mushishi-{mode}.target", timeout=timeout)
        deadline = time.monotonic() + 10
        while self.gpud_state()[0] != mode or self.gpud_state()[1] == "switching":
            if time.monotonic() > deadline:
                raise AssertionError(f"gpud did not follow the isolate to {mode}: "
                                     f"{self.gpud_state()}")
            time.sleep(0.05)

    def start_docker(self, containers: Sequence[str] = ()) -> dict[str, int]:
        """The real dockerd (vfs storage, kept through mode isolation, as on a box where it
        is enabled) with a busybox image, and a container running `sleep` for each name;
        {name: the host pid of its process}."""
        box = self.box
        if box.is_active("docker.service") != "active":
            box.write("/etc/docker/daemon.json", '{"storage-driver": "vfs"}\n')
            for unit in ("docker.socket", "docker.service", "containerd.service"):
                box.write(f"/etc/systemd/system/{unit}.d/zz-isolate.conf",
                          "[Unit]\nIgnoreOnIsolate=yes\n")
            box.systemctl("daemon-reload")
            box.systemctl("start", "docker.service", timeout=120)
            box.run(BUSYBOX_IMAGE, timeout=300)
        pids = {}
        for name in containers:
            box.run([DOCKER, "run", "-d", "--init", "--name", name, DOCKER_IMAGE, "sleep",
                     "3600"])
            pids[name] = int(box.run([DOCKER, "inspect", "-f", "{{.State.Pid}}", name]).stdout)
        return pids

    def container_running(self, name: str) -> bool:
        """Whether dockerd says the container runs."""
        state = self.box.run([DOCKER, "inspect", "-f", "{{.State.Running}}", name]).stdout
        return state.strip() == "true"

    def mushishi(self, *args: str, user: str | None = None, check: bool = False):
        """Run the mushishi CLI inside the sandbox."""
        return self.box.run([f"{BINDIR}/mushishi", *args], user=user, check=check,
                            timeout=300)

    def http(self, method: str, url: str, body: object | None = None) -> Any:
        """One HTTP request from inside the sandbox's network namespace; the JSON answer."""
        code = (
            "import json,sys,urllib.request\n"
            "data = None if sys.argv[3] == 'null' else sys.argv[3].encode()\n"
            "req = urllib.request.Request(sys.argv[2], data=data, method=sys.argv[1],"
            " headers={'Content-Type': 'application/json'})\n"
            "print(urllib.request.urlopen(req, timeout=10).read().decode())\n")
        result = self.box.run([PYTHON, "-c", code, method, url, json.dumps(body)])
        text = result.stdout.strip()
        return json.loads(text) if text else None

    def unit_pid(self, unit: str) -> int:
        """MainPID of a unit inside the sandbox (its pid namespace)."""
        return int(self.box.systemctl("show", "-p", "MainPID", "--value", unit).stdout)

    def start_stray(self, name: str, unit: str) -> int:
        """A real process whose program is called `name` (a copy of sleep), as a unit."""
        program = self.box.shared / "bin" / name
        program.parent.mkdir(parents=True, exist_ok=True)
        if not program.exists():
            program.write_bytes(Path("/usr/bin/sleep").read_bytes())
            program.chmod(0o755)
        self.box.run(["systemd-run", f"--unit={unit}", "--property=IgnoreOnIsolate=yes",
                      str(program), "3600"])
        return self.unit_pid(unit)


def quoted(argv: list[str]) -> str:
    """argv as one shell line (for logs)."""
    return shlex.join(argv)
