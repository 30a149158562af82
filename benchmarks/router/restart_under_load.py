"""`systemctl restart mushishi-router` under a keep-alive load, on the demo stack.

The run of issue 14's table: the whole stack in a booted systemd as `make demo` runs it
(tests/system/stack.py: the real router, gpud in mode `off`, the CPU floor with llama-server
and the tiny model, so `private` is T1 on the CPU floor alone), an aiohttp client inside the
sandbox with keep-alive connections and no retries sending non-streamed requests for
`private`, CONCURRENCY at a time, while the router is restarted RESTARTS times. It prints
how many requests failed, by kind, and how long each drain took (the router's journal).

Usage: .venv/bin/python benchmarks/router/restart_under_load.py [--requests 6000]
       [--restarts 5] [--concurrency 32]

The CI form, with stand-in backends, is tests/system/test_restart_drain.py.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.assets.tiny_model import write_tiny_model  # noqa: E402
from tests.system import router_load  # noqa: E402
from tests.system.stack import boot_stack  # noqa: E402

KEY = "change-me"  # the example config's key (docs/examples/mushishi.toml)
UNIT = "mushishi-router.service"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    binary = subprocess.run([str(REPO / "scripts" / "build-llama-server.sh")], check=True,
                            capture_output=True, text=True).stdout.strip().splitlines()[-1]
    model = write_tiny_model(Path("/var/cache/mushishi/test-assets/restart-load-tiny.gguf"))
    box = boot_stack(Path(binary), model)
    try:
        results, restarted = router_load.restart_under_load(
            box, KEY, UNIT, "private", args.requests, args.concurrency, args.restarts,
            box.shared / "restart-load.json")
        journal = box.journal("-u", UNIT, "-o", "cat")
    finally:
        box.stop()
    print(router_load.summary("router restarts (T1, CPU floor)", results, args.concurrency,
                              args.restarts))
    if max(float(r["started"]) for r in results) <= restarted:  # type: ignore[arg-type]
        print("warning: the load ended before the last restart; raise --requests")
    drains = re.findall(r"stopped: drained in ([0-9.]+)s", journal)
    print(f"drains (s): {', '.join(drains) or 'none logged'}")
    flaps = re.findall(r"backend cpu: up -> down \(([^)]*)\)", journal)
    print(f"backend cpu marked down by the prober: {len(flaps)} time(s)")
    return 0 if not router_load.failures(results) else 1


if __name__ == "__main__":
    sys.exit(main())
