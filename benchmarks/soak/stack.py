"""The soak's stack: `make demo`'s (the example config adapted for a GPU-less sandbox, the real
llama-server on the tiny model, gpud on a simulated GPU, stand-in GPU tenants) with the few
changes a soak needs, and the commands the harness runs inside the sandbox."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import tomlkit

from devtools.sandbox import Sandbox
from scripts.demo import (
    DEMO_CLOUD,
    DEMO_CLOUD_KEY,
    adapt_for_sandbox,
)
from tests.paths import BINDIR, EXAMPLE_CONFIG
from tests.system.stack import ALWAYS_ON, place_model, wait_serving

KEY = "sk-soak-harness"
CLOUD_PORT = 8443
CLOUD_MODEL = "moonshotai/kimi-k2.6"
# The router reaches the CPU floor through the harness's relay (standins.DropProxy), which
# can drop a request's connection before any byte of the answer, as an overloaded
# llama-server does; the floor itself still listens on the example's 8001.
RELAY_PORT = 8011
FLOOR_PORT = 8001
FIRST_BYTE_TIMEOUT_S = 20.0
T1_QUEUE_TIMEOUT_S = 30.0
EGRESS_STATE = "/var/lib/mushishi/egress"
# The ledger's own small filesystem, so that "disk full" hits the ledger and nothing else.
LEDGER_FS_SIZE = "16m"
PROFILES = {"private": "T1", "personal": "T2", "burst": "T3"}
CREDENTIALS = {"restic-password": "a-long-restic-password-for-the-soak",
               "ntfy-topic": "mushishi-soak", "ngc-api-key": DEMO_CLOUD_KEY}
MUSHISHI = f"{BINDIR}/mushishi"


def soak_config(llama_server: str) -> str:
    """The example config, adapted as the demo adapts it, plus: the cloud backend at the
    harness's stand-in provider (its only cloud backend, with a budget the soak never
    spends: the check is that the ledger equals what the provider counted), the CPU floor
    behind the relay, a T3 profile, the harness's key, and timeouts that bound a request."""
    doc: Any = tomlkit.parse(EXAMPLE_CONFIG.read_text())
    adapt_for_sandbox(doc, llama_server)
    doc["gpu"]["poll_interval_s"] = 1.0
    router = doc["router"]
    router["probe_interval_s"] = 0.5
    router["first_byte_timeout_s"] = FIRST_BYTE_TIMEOUT_S
    router["stream_idle_timeout_s"] = FIRST_BYTE_TIMEOUT_S
    backends = doc["backends"]
    backends["cpu"]["url"] = f"http://127.0.0.1:{RELAY_PORT}/v1"
    backends["kimi"]["url"] = f"http://{DEMO_CLOUD}:{CLOUD_PORT}/v1"
    backends["kimi"]["budget"] = {"requests_per_day": 100_000_000,
                                  "tokens_per_day": 100_000_000_000}
    # Groq and OpenRouter keep real URLs in the example: unreachable here, they would only
    # add connect timeouts to every T2 request that reaches the cloud.
    del backends["groq"]
    del backends["openrouter"]
    # The soak kills or stops the floor every half minute or so, for the whole run: with the
    # shipped backoff (doubling to 300 s, reset after 300 s ready) a 38-minute attempt had
    # the floor waiting 160 s to start again after 13 minutes, T1 work answered only by the
    # queue's timeout and the machine idle. The backoff itself is tested in
    # tests/integration/cpu_floor; here the floor comes back as a box's would after one
    # crash, and the faults keep coming.
    floor = doc["cpu_floor"]
    floor["restart_backoff_max_s"] = 20.0
    floor["stable_after_s"] = 60.0
    profiles = doc["profiles"]
    profiles["personal"]["chain"] = ["gpu", "cpu", "kimi"]
    profiles["private"]["queue_timeout_s"] = T1_QUEUE_TIMEOUT_S
    burst = tomlkit.table()
    burst["tier"] = "T3"
    burst["chain"] = ["kimi", "cpu"]
    profiles["burst"] = burst
    doc["keys"][hashlib.sha256(KEY.encode()).hexdigest()] = list(PROFILES)
    return tomlkit.dumps(doc)


def request_bound_s() -> float:
    """How long any soak request may take, from the config above: a T1 request may wait out
    one hop's first byte and then the T1 queue; a T2/T3 one a local hop's first byte and
    the egress's (first byte + 2 s); plus 10 s for the answer itself on a loaded machine."""
    t1 = FIRST_BYTE_TIMEOUT_S + T1_QUEUE_TIMEOUT_S
    t2 = FIRST_BYTE_TIMEOUT_S + FIRST_BYTE_TIMEOUT_S + 2
    return max(t1, t2) + 10.0


def boot(llama_server: Path, tiny_model: Path) -> Sandbox:
    """A booted sandbox with the soak's stack installed and mushishi.target started in mode
    off, the cloud address on lo and the ledger on its own small tmpfs. The router is not
    waited for: the relay that leads it to the floor runs in the harness (wait_ready)."""
    box = Sandbox()
    box.boot()
    try:
        box.add_default_route()
        box.run(["ip", "addr", "add", f"{DEMO_CLOUD}/32", "dev", "lo"])
        place_model(box, tiny_model)
        box.install(soak_config(str(llama_server)), credentials=CREDENTIALS)
        box.run(f"mkdir -p {EGRESS_STATE} && mount -t tmpfs -o size={LEDGER_FS_SIZE},"
                f"mode=0750 soak-ledger {EGRESS_STATE} && chown mushishi:mushishi {EGRESS_STATE}")
        box.systemctl("start", "--no-block", "mushishi.target")
        box.systemctl("isolate", "mushishi-off.target")
        for unit in ALWAYS_ON:
            box.wait_for(unit, "active", timeout=180)
    except BaseException:
        box.stop()
        raise
    return box


def wait_ready(box: Sandbox) -> None:
    """Until the router routes private work to the CPU floor (through the relay)."""
    wait_serving(box, timeout=120)


def main_pid(box: Sandbox, unit: str) -> int:
    """The unit's MainPID inside the sandbox (0 when it has none)."""
    return int(box.systemctl("show", "-P", "MainPID", unit, check=False).stdout.strip() or 0)


def rss_kib(box: Sandbox, unit: str) -> tuple[int, int]:
    """(MainPID, VmRSS in KiB) of a unit's main process; (0, 0) when it has none."""
    pid = main_pid(box, unit)
    if not pid:
        return 0, 0
    status = box.run(["cat", f"/proc/{pid}/status"], check=False).stdout
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return pid, int(line.split()[1])
    return pid, 0


def llama_server_pid(box: Sandbox) -> int:
    """llama-server's PID inside the sandbox (the CPU floor supervisor's child), or 0."""
    supervisor = main_pid(box, "mushishi-cpu-floor.service")
    if not supervisor:
        return 0
    found = box.run(["pgrep", "-P", str(supervisor), "-x", "llama-server"], check=False)
    pids = found.stdout.split()
    return int(pids[0]) if pids else 0


BUDGETS = """
import json
from mushishi.shared.config.loader import load_settings
from mushishi.services.egress.ledger import read_budgets
print(json.dumps(read_budgets(load_settings("/etc/mushishi/mushishi.toml"))))
"""


def budgets(box: Sandbox) -> dict[str, dict[str, Any]]:
    """The egress ledger's view of today's budgets (as `mushishi status` reads it)."""
    result = box.run([f"{BINDIR}/python", "-c", BUDGETS], check=False, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"cannot read the egress ledger: {result.stdout}{result.stderr}")
    return json.loads(result.stdout)
