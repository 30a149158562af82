"""`mushishi status` wall time with everything up, and with one daemon hung or stopped.

The whole stack runs in a booted systemd (tests/system/stack.py: the real router, gpud,
CPU floor with llama-server and the tiny model). Each case is timed with hyperfine inside
the sandbox, interleaved with its peers in the same run:

* `systemctl status` of the three always-on services (systemd's own status: one D-Bus
  round trip per unit, no daemon asked anything) — the native peer;
* `python -c "import mushishi.ctl.status_cmd"` — the interpreter and imports, the
  floor of any Python command.

Cases: all up; the router hung (SIGSTOP: its socket still accepts, nothing answers);
gpud hung (SIGSTOP: its bus name is owned, no call is answered); gpud stopped. A hung daemon
is resumed (SIGCONT) right after its measurement, well before systemd's WatchdogSec=30.

Usage: .venv/bin/python benchmarks/status/bench_status.py [--runs N]
Writes benchmarks/status/results.md and results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from devtools.sandbox import Sandbox  # noqa: E402
from tests.assets.tiny_model import write_tiny_model  # noqa: E402
from tests.system.stack import MUSHISHI, boot_stack  # noqa: E402

BINDIR = Path(sys.executable).parent
PEERS = {
    "mushishi status": f"{MUSHISHI} status --json --color never",
    "systemctl status (3 units)": "systemctl status --no-pager --lines=0 mushishi-router "
                                  "mushishi-gpud mushishi-cpu-floor",
    "python + imports": f"{BINDIR}/python -c 'import mushishi.ctl.status_cmd'",
}


def main_pid(box: Sandbox, unit: str) -> str:
    return box.systemctl("show", "-p", "MainPID", "--value", unit).stdout.strip()


def hyperfine(box: Sandbox, runs: int, label: str) -> dict[str, dict[str, float]]:
    out = f"/tmp/hyperfine-{label}.json"
    argv = ["hyperfine", "--warmup", "2", "--runs", str(runs), "-N", "--ignore-failure",
            "--export-json", out]
    for name, command in PEERS.items():
        argv += ["--command-name", name, command]
    box.run(argv, timeout=600)
    data = json.loads(box.run(["cat", out]).stdout)
    return {result["command"]: {"mean_s": result["mean"], "median_s": result["median"],
                                "max_s": result["max"], "stddev_s": result["stddev"]}
            for result in data["results"]}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    binary = subprocess.run([str(REPO / "scripts" / "build-llama-server.sh")], check=True,
                            capture_output=True, text=True).stdout.strip().splitlines()[-1]
    model = write_tiny_model(Path("/var/cache/mushishi/test-assets/bench-status-tiny.gguf"))
    load_before = os.getloadavg()[0]
    box = boot_stack(Path(binary), model)
    cases: dict[str, dict[str, dict[str, float]]] = {}
    try:
        cases["all up"] = hyperfine(box, args.runs, "up")
        for unit, label in (("mushishi-router.service", "router hung"),
                            ("mushishi-gpud.service", "gpud hung")):
            pid = main_pid(box, unit)
            box.run(["kill", "-STOP", pid])
            try:
                cases[label] = hyperfine(box, args.runs, label.replace(" ", "-"))
            finally:
                box.run(["kill", "-CONT", pid])
        box.systemctl("stop", "mushishi-gpud.service")
        cases["gpud stopped"] = hyperfine(box, args.runs, "gpud-stopped")
        box.systemctl("start", "mushishi-gpud.service")
    finally:
        box.stop()
    results = {"time": datetime.now(UTC).isoformat(timespec="seconds"),
               "machine": {"cpus": str(len(os.sched_getaffinity(0))),
                           "load_before": f"{load_before:.2f}",
                           "python": platform.python_version(),
                           "kernel": platform.release()},
               "runs": args.runs, "per_source_timeout_s": 0.5, "cases": cases}
    here = Path(__file__).parent
    (here / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# `mushishi status` wall time",
        "",
        f"Taken {results['time']}, {results['machine']['cpus']} cores, load average "
        f"{results['machine']['load_before']} before the run. "
        f"hyperfine, {args.runs} runs after 2 warm-ups, inside the booted stack; per-source "
        "timeout 0.5 s (the default).",
        "",
        "| case | mushishi status (median) | max | systemctl status (median) | "
        "python + imports (median) | status / systemctl |",
        "|---|---|---|---|---|---|",
    ]
    for case, peers in cases.items():
        status = peers["mushishi status"]
        native = peers["systemctl status (3 units)"]
        imports = peers["python + imports"]
        lines.append(f"| {case} | {status['median_s']:.3f} s | {status['max_s']:.3f} s | "
                     f"{native['median_s']:.3f} s | {imports['median_s']:.3f} s | "
                     f"{status['median_s'] / native['median_s']:.1f}× |")
    lines += ["", "Regenerate: `.venv/bin/python benchmarks/status/bench_status.py`."]
    (here / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
