"""The whole always-on stack in a booted systemd, as `make demo` runs it: the shipped example
config adapted for a machine without a GPU (a simulated GPU for gpud, stand-ins speaking
vLLM's, ComfyUI's and the audio gateway's wire formats for the tenants, a real llama-server
with the tiny model for the CPU floor, ntfy unreachable, a local restic repository).

Every daemon is the real one, run by its real unit from this worktree's virtualenv.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import tomlkit

from devtools.sandbox import Sandbox
from scripts.demo import GPU_STATE, SIMULATED_GPU, TINY_MODEL, adapt_for_sandbox
from tests.paths import BINDIR, EXAMPLE_CONFIG

# A mushishi unit replaced by a sleeper (a drop-in), where a test needs the unit active
# but not the daemon: everything the real one would run before, beside or after is cleared.
STANDIN = """[Service]
Type=simple
ExecStartPre=
ExecStart=
ExecStart=/bin/sleep infinity
ExecStop=
ExecReload=
WatchdogSec=0
"""
CREDENTIALS = {"restic-password": "a-long-restic-password-for-the-stack-tests",
               "ntfy-topic": "mushishi-stack-test"}
ALWAYS_ON = ("mushishi-router.service", "mushishi-gpud.service", "mushishi-cpu-floor.service")
MUSHISHI = f"{BINDIR}/mushishi"
COPY_REPOSITORY = "/var/lib/mushishi/restic-copy"


def stack_config(llama_server: str) -> str:
    """The example config with what a GPU-less sandbox needs (as scripts/demo.py adapts it),
    gpud and the router polling faster, and short bench answers."""
    doc: Any = tomlkit.parse(EXAMPLE_CONFIG.read_text())
    adapt_for_sandbox(doc, llama_server)
    doc["gpu"]["poll_interval_s"] = 1.0
    doc["router"]["probe_interval_s"] = 0.5
    doc["bench"] = {"max_tokens": 16}
    # A copy repository beside the primary (a local one; tests/system/test_backup_copies.py
    # copies off the box over sftp): the backup then writes its per-copy series, which
    # node_exporter serves beside the primary's.
    copies = tomlkit.aot()
    copies.append(tomlkit.table())
    copies[0]["repository"] = COPY_REPOSITORY
    doc["backup"]["copies"] = copies
    return tomlkit.dumps(doc)


def place_model(box: Sandbox, tiny_model: Path) -> None:
    """The simulated GPU's state, and the tiny model where the stack's config expects it."""
    box.write(GPU_STATE, json.dumps(SIMULATED_GPU))
    copy_tiny_model(box, tiny_model)


def copy_tiny_model(box: Sandbox, tiny_model: Path) -> None:
    """The tiny model at TINY_MODEL in the sandbox, readable by the CPU floor."""
    models = box.path(Path(TINY_MODEL).parent)
    models.mkdir(parents=True, exist_ok=True)
    models.chmod(0o755)
    shutil.copyfile(tiny_model, models / "tiny.gguf")
    (models / "tiny.gguf").chmod(0o644)


def boot_stack(llama_server: Path, tiny_model: Path) -> Sandbox:
    """A booted sandbox with the stack installed and mushishi.target started in mode off."""
    box = Sandbox()
    box.boot()
    try:
        box.add_default_route()
        place_model(box, tiny_model)
        box.install(stack_config(str(llama_server)), credentials=CREDENTIALS)
        box.systemctl("start", "--no-block", "mushishi.target")
        box.systemctl("isolate", "mushishi-off.target")
        for unit in ALWAYS_ON:
            box.wait_for(unit, "active", timeout=120)
        wait_serving(box)
    except BaseException:
        box.stop()
        raise
    return box


def wait_serving(box: Sandbox, timeout: float = 60.0) -> None:
    """Until the router says the private profile would be answered (the floor is up)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        result = box.run(["curl", "-sS", "--max-time", "2", "--unix-socket",
                          "/run/mushishi/router.sock", "http://localhost/status"], check=False)
        last = result.stdout + result.stderr
        if result.returncode == 0 and json.loads(result.stdout)["profiles"]["private"][
                "would_use"] == "cpu":
            return
        time.sleep(0.2)
    raise AssertionError(f"the router never routed private to the CPU floor: {last[-2000:]}")


def status_json(box: Sandbox) -> tuple[int, dict[str, Any]]:
    """`mushishi status --json` inside the sandbox, as root: (exit status, report)."""
    result = box.run([MUSHISHI, "status", "--json"], check=False, timeout=30)
    try:
        return result.returncode, json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"not JSON ({result.returncode}): {result.stdout}"
                             f"{result.stderr}") from None
