"""`make demo`: the shipped example config, adapted for a machine without a GPU, running in
a sandboxed systemd (devtools.sandbox). `make demo-stop` ends it.

What is adapted, and why, is listed in `adapt()`; everything else is the seed box's layout.
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import tomlkit

from devtools.sandbox import Sandbox, SandboxError, attach

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "docs" / "examples" / "mushishi.toml"
BINDIR = str(Path(sys.executable).parent)
NAME = "demo"
TINY_MODEL = "/var/lib/mushishi/models/tiny.gguf"
GPU_STATE = "/run/mushishi/gpu-sim.json"  # gpu.simulated_state's default
SIMULATED_GPU = {"total_mib": 32607, "used_mib": 500, "util_percent": 0, "temperature_c": 40,
                 "power_w": 20, "processes": []}
STANDINS = REPO / "tests" / "standins"
# No GPU, vLLM or ComfyUI here: each tenant runs a stand-in speaking the same wire format on
# the example's port, so `mushishi mode agent` really starts, probes and drains tenants.
TENANT_STANDINS = {
    "vllm-forensic": ["vllm_gpu.py", "--port", "8000", "--model",
                      "nvidia/nemotron-3-nano-omni-30b-a3b-reasoning"],
    "vllm-agent": ["vllm_gpu.py", "--port", "8000", "--model",
                   "nvidia/nemotron-3-nano-omni-30b-a3b-reasoning"],
    "comfyui": ["comfyui.py", "--port", "8188"],
    "audio": ["json_queue.py", "--port", "9000"],
}


# No internet in the sandbox: Kimi is a stand-in cloud provider on a non-local address
# (203.0.113.10, TEST-NET-3, on the sandbox's lo), so the egress really reaches "the cloud";
# Groq and OpenRouter keep their real URLs and are unreachable here (their budgets show).
DEMO_CLOUD = "203.0.113.10"
DEMO_CLOUD_KEY = "nvapi-demo"
DEMO_CLOUD_UNIT = f"""[Unit]
Description=demo: a stand-in cloud provider (Kimi's OpenAI-compatible API) at {DEMO_CLOUD}
IgnoreOnIsolate=yes
[Service]
Environment=PYTHONPATH={REPO}
WorkingDirectory={REPO}
ExecStart={sys.executable} -m tests.standins.cloud --host {DEMO_CLOUD} --port 8443 \
  --model moonshotai/kimi-k2.6 --key {DEMO_CLOUD_KEY} --name kimi --token-delay 0.05
"""


def llama_server() -> str:
    """The cached llama-server build (scripts/build-llama-server.sh builds it once)."""
    return subprocess.run([str(REPO / "scripts" / "build-llama-server.sh")], check=True,
                          capture_output=True, text=True).stdout.strip()


def write_tiny_model(box: Sandbox) -> None:
    """Generate the CPU floor's tiny model inside the sandbox (tests/assets/tiny_model.py):
    a real llama-server then loads and serves it."""
    target = box.path(TINY_MODEL)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.parent.chmod(0o755)
    subprocess.run([sys.executable, "-m", "tests.assets.tiny_model", str(target)], cwd=REPO,
                   check=True, capture_output=True)


def adapt_for_sandbox(doc: Any, llama_server: str) -> None:
    """The changes to the example config (a tomlkit document) that any GPU-less sandbox
    needs: the demo's and tests/system/stack.py's."""
    doc["gpu"]["probe"] = "simulated"  # no NVIDIA GPU here: gpud reads a JSON file instead
    for name, (script, *args) in TENANT_STANDINS.items():
        doc["tenants"][name]["command"] = [sys.executable, str(STANDINS / script), *args]
        # A stand-in is a plain process (confined by its unit), not a `docker run`.
        doc["tenants"][name].pop("runtime", None)
    floor = doc["cpu_floor"]
    floor["llama_server"] = llama_server
    floor["model"] = TINY_MODEL  # a tiny generated model (write_tiny_model)
    floor["threads"] = 1
    floor["ctx_size"] = 512
    floor["mlock"] = False
    doc["watchdog"]["disk_mounts"] = ["/"]
    # No ntfy here (no internet in the sandbox): alerts wait in
    # /var/lib/mushishi/watchdog/outbox and are delivered once ntfy.url is reachable.
    doc["ntfy"]["url"] = "http://127.0.0.1:9"
    backup = doc["backup"]
    backup["repository"] = "/var/lib/mushishi/restic-repo"  # created by `mushishi install`
    sets = backup["sets"]
    for index in reversed(range(len(sets))):  # only /etc/mushishi exists in the sandbox
        if not str(sets[index]["path"]).startswith("/etc/mushishi"):
            del sets[index]


def adapt(text: str) -> str:
    """The example config with the few changes a GPU-less sandbox needs."""
    doc = tomlkit.parse(text)
    adapt_for_sandbox(doc, llama_server())
    doc["backends"]["kimi"]["url"] = f"http://{DEMO_CLOUD}:8443/v1"  # the stand-in cloud
    return tomlkit.dumps(doc)


def demo_credentials() -> dict[str, str]:
    """Written before install, so each unit gets its LoadCredential= line."""
    return {"restic-password": secrets.token_urlsafe(24), "ntfy-topic": "mushishi-demo",
            "ngc-api-key": DEMO_CLOUD_KEY, "groq-api-key": "gsk-demo-unreachable",
            "openrouter-api-key": "sk-or-demo-unreachable"}


def up() -> int:
    """Boot the sandbox, install mushishi into it, start the always-on units."""
    try:
        attach(NAME)
        print(f"the demo is already running; `make demo-stop` ends it, "
              f"`python -m devtools.sandbox shell {NAME}` (from the checkout) enters it")
        return 0
    except SandboxError:
        pass
    Sandbox(NAME).stop()  # clear a stale state directory, if any
    box = Sandbox(NAME, detached=True).boot()
    box.write(GPU_STATE, json.dumps(SIMULATED_GPU))
    box.run(["ip", "addr", "add", f"{DEMO_CLOUD}/32", "dev", "lo"])
    box.add_default_route()
    box.write("/etc/systemd/system/demo-cloud.service", DEMO_CLOUD_UNIT)
    write_tiny_model(box)
    print(box.install(adapt(EXAMPLE.read_text()), bindir=BINDIR,
                      credentials=demo_credentials()), end="")
    box.systemctl("start", "demo-cloud.service")
    box.systemctl("start", "--no-block", "mushishi.target")
    box.systemctl("isolate", "mushishi-off.target", check=False)
    box.systemctl("start", "--no-block", "mushishi-backup.service")  # a first real backup
    box.systemctl("start", "--no-block", "mushishi-bench.service")  # a first speed baseline
    print(box.systemctl("list-units", "--all", "mushishi*", check=False).stdout)
    print(f"""mushishi demo is running in sandbox {NAME!r} (systemd PID {box.pid} on this host).
  units:    sudo nsenter -t {box.pid} -a systemctl status 'mushishi*'
  journal:  sudo nsenter -t {box.pid} -a journalctl -u 'mushishi*' -f
  shell:    cd {REPO} && sudo {BINDIR}/python -m devtools.sandbox shell {NAME}
            (then: mushishi status, curl -s 127.0.0.1:4000/health, systemctl isolate …)
  status:   sudo nsenter -t {box.pid} -a {BINDIR}/mushishi status   (one screen of everything)
  bench:    systemctl start mushishi-bench; tail /var/lib/mushishi/bench/results.csv
  cloud:    systemctl stop mushishi-cpu-floor, then ask profile personal: the egress sends
            it to the stand-in Kimi at {DEMO_CLOUD} (mushishi status shows every budget)
  backup:   systemctl start mushishi-backup; cat /var/lib/mushishi/backup/last.json
  watchdog: systemctl start mushishi-watchdog; cat /var/lib/mushishi/watchdog/last.json
            (ntfy is unreachable here: alerts wait in /var/lib/mushishi/watchdog/outbox)
  stop:     make demo-stop""")
    return 0


def down() -> int:
    """Power the sandbox off and remove its state."""
    Sandbox(NAME, detached=True).stop()
    print("demo stopped")
    return 0


def status() -> int:
    """List the mushishi units inside the demo."""
    try:
        box = attach(NAME)
    except SandboxError as error:
        print(error, file=sys.stderr)
        return 1
    print(box.systemctl("list-units", "--all", "mushishi*", check=False).stdout)
    return 0


def main() -> int:
    """up | down | status."""
    parser = argparse.ArgumentParser(prog="scripts/demo.py")
    parser.add_argument("action", choices=["up", "down", "status"])
    action = parser.parse_args().action
    return {"up": up, "down": down, "status": status}[action]()


if __name__ == "__main__":
    sys.exit(main())
