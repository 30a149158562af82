"""The watchdog's wall time and peak RSS, against its peers in the same run.

`mushishi-watchdog` runs a full check pass against a real restic repository (30
snapshots); gpud, the router and the bench CSV are absent (missing-source) and ntfy is
unreachable (alerts go to the outbox), which is the demo's situation. Peers, measured in
the same run and interleaved:

* `restic snapshots --json --no-lock --no-cache` alone: the one check that must read the
  repository, and the floor of any outcome check;
* `python -c "import mushishi.services.watchdog.app"`: the interpreter and imports;
* the watchdog again with no backup set declared, so no restic runs: its own RSS.

Peak RSS is ru_maxrss from wait4(2): the largest of the process and the children it
waited for (restic). Usage: `.venv/bin/python benchmarks/watchdog/bench_watchdog.py`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BINDIR = Path(sys.executable).parent
RESTIC = "/usr/bin/restic"
PASSWORD = "benchmark password"


def measure(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    """(wall seconds, peak RSS KiB) of one run."""
    started = time.perf_counter()
    child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {child.returncode}")
    return elapsed, usage.ru_maxrss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mushishi-bench-watchdog-", dir="/var/tmp"))
    try:
        source = work / "source"
        source.mkdir()
        (source / "a.txt").write_text("a\n")
        repo = work / "repo"
        env = {"PATH": "/usr/bin:/bin", "RESTIC_PASSWORD": PASSWORD,
               "MUSHISHI_CREDENTIAL_RESTIC_PASSWORD": PASSWORD,
               "MUSHISHI_CREDENTIAL_NTFY_TOPIC": "bench"}
        subprocess.run([RESTIC, "--repo", str(repo), "--no-cache", "init"], check=True,
                       capture_output=True, env=env)
        for day in range(1, 31):
            subprocess.run([RESTIC, "--repo", str(repo), "--no-cache", "backup", "--tag",
                            "mushishi", "--time", f"2026-01-{day:02d} 12:00:00", str(source)],
                           check=True, capture_output=True, env=env)
        config = work / "mushishi.toml"
        config.write_text(f"""[router]
listen = ["127.0.0.1:4000", "unix:{work / 'router.sock'}"]
[ntfy]
url = "http://127.0.0.1:9"
[watchdog]
state_dir = "{work / 'watchdog'}"
textfile_dir = "{work / 'textfile'}"
bench_results = "{work / 'results.csv'}"
disk_mounts = ["/", "/var"]
[backup]
repository = "{repo}"
state_dir = "{work / 'backup'}"
[[backup.sets]]
path = "{source}"
reason = "benchmark"
""")
        # The same pass without restic (no sets declared): the Python process's own RSS.
        alone = work / "no-restic.toml"
        alone.write_text(config.read_text().split("[[backup.sets]]")[0]
                         .replace(str(work / "watchdog"), str(work / "watchdog-alone")))
        commands = {
            "mushishi-watchdog": [str(BINDIR / "mushishi-watchdog"), "--config", str(config)],
            "watchdog, no restic": [str(BINDIR / "mushishi-watchdog"), "--config", str(alone)],
            "restic snapshots": [RESTIC, "--repo", str(repo), "--no-cache", "--no-lock",
                                 "--json", "snapshots"],
            "python + imports": [sys.executable, "-c",
                                 "import mushishi.services.watchdog.app"],
        }
        results: dict[str, list[tuple[float, int]]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, argv in commands.items():
                results[name].append(measure(argv, env))
        print(f"{'command':20s} {'wall s (median)':>16s} {'peak RSS MiB (max)':>19s}")
        for name, samples in results.items():
            wall = statistics.median(s[0] for s in samples)
            rss = max(s[1] for s in samples) / 1024
            print(f"{name:20s} {wall:16.2f} {rss:19.1f}")
        watchdog = statistics.median(s[0] for s in results["mushishi-watchdog"])
        snapshots = statistics.median(s[0] for s in results["restic snapshots"])
        print(f"\nwatchdog / restic snapshots wall ratio: {watchdog / snapshots:.2f} "
              f"({args.runs} runs each, interleaved; load average {os.getloadavg()[0]:.2f})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
