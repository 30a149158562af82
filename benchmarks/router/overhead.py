"""The router's hot-path cost in one short run: mushishi against the bare pass-through.

Starts the nginx `return 200` backends, the bare aiohttp + uvloop pass-through
(`passthrough.py`) and mushishi-router (auth, routing, metrics and the per-request journal
record all on), then measures both with wrk at concurrency 16 (requests/s) and 1 (p50),
alternating between them `--rounds` times so that load from other work on the machine hits
both alike. Prints, per round and as medians: mushishi / pass-through requests/s at c16, and
the p50 mushishi adds over the backend at c1.

    .venv/bin/python benchmarks/router/overhead.py [--rounds 3] [--seconds 3] [--out DIR]
                                                   [--tier T2]

`--tier T1` routes through a T1 profile, which adds the T1 checks (the remote media scan).

`--baseline CHECKOUT` also runs the router of another checkout (its `.venv/bin/
mushishi-router`, e.g. a `git worktree` of an earlier commit) on the same config and
backends, measured in the same rounds: "not slower than before" as a ratio of one run.

Throughput at c16 on a small shared machine swings by a third from one 3-second run to the
next (wrk, nginx and the router share the cores); so each Python server's CPU time per
request during its c16 runs (user + system, from /proc) is reported too: what a request
costs it, whatever else ran. `cpu_vs_baseline` is mushishi's CPU per request over the
baseline's (below 1: cheaper).

`--paired` (with `--baseline`) loads both routers at the same time in each round instead,
wrk at c16 on each, and compares their CPU per request in that one window. `--journal` has
the routers log to a journald stand-in (a drained datagram socket, through a mount namespace
of their own: needs root) as under systemd, instead of stderr to /dev/null.

For the whole comparison (nginx, LiteLLM, streaming, RSS, failover) use `run.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.router.run import (  # noqa: E402  (the repository is put on the path first)
    COMPLETION,
    Processes,
    cpu_seconds,
    free_port,
    journal_drain,
    machine,
    missing_tool,
    mushishi_config,
    nginx_conf,
    post_script,
    router,
    wait_port,
    write_results,
    wrk,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--tier", default="T2", choices=["T1", "T1-strict", "T2", "T3"],
                        help="the tier of the profile measured (both backends are local)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="a checkout whose router is measured in the same rounds")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the results as JSON here (default: print only)")
    parser.add_argument("--paired", action="store_true",
                        help="with --baseline: load both routers at once in each round (wrk "
                             "at c16 on each), so the machine's drift hits both alike")
    parser.add_argument("--journal", action="store_true",
                        help="the routers log to a journald stand-in as under systemd, not "
                             "to stderr (needs root: a mount namespace each)")
    args = parser.parse_args()
    if args.paired and args.baseline is None:
        parser.error("--paired compares against --baseline: name the checkout")
    if args.journal and os.geteuid() != 0:
        parser.error("--journal runs each router in a mount namespace of its own: run as root")
    if (missing := missing_tool(with_litellm=False)) is not None:
        print(missing, file=sys.stderr)
        return 1
    results: dict[str, object] = {"machine": machine(), "seconds_per_run": args.seconds,
                                  "tier": args.tier, "journal": args.journal}
    baseline_bin = None
    if args.baseline is not None:
        baseline_bin = args.baseline.resolve() / ".venv" / "bin"
        if not (baseline_bin / "mushishi-router").exists():
            print(f"{baseline_bin / 'mushishi-router'} does not exist: make the baseline "
                  f"checkout's virtualenv first (make venv there)", file=sys.stderr)
            return 1
        results["baseline"] = {"checkout": str(args.baseline), "commit": subprocess.run(
            ["git", "-C", str(args.baseline), "rev-parse", "HEAD"], capture_output=True,
            text=True, check=False).stdout.strip()}
    processes = Processes()
    work = Path(tempfile.mkdtemp(prefix="mushishi-overhead-"))
    script = post_script(work)
    rounds: list[dict[str, float]] = []
    journal = work / "journal.sock" if args.journal else None
    try:
        if journal is not None:
            journal_drain(processes, journal)
        backend, backend2 = free_port(), free_port()
        for port, name in ((backend, "backend"), (backend2, "backend2")):
            processes.start(["nginx", "-c", str(nginx_conf(work / name, port, body=COMPLETION)),
                             "-p", str(work / name)])
            wait_port(port)
        direct = f"http://127.0.0.1:{backend}/v1/chat/completions"
        bare = free_port()
        pids = {"passthrough": processes.start(
            [sys.executable, str(REPO / "benchmarks" / "router" / "passthrough.py"), str(bare),
             direct]).pid}
        wait_port(bare)
        port = free_port()
        config = mushishi_config(work / "mushishi", port, f"http://127.0.0.1:{backend}/v1",
                                 f"http://127.0.0.1:{backend2}/v1", tier=args.tier)
        targets = {"direct": direct,
                   "passthrough": f"http://127.0.0.1:{bare}/v1/chat/completions",
                   "mushishi": f"http://127.0.0.1:{port}/v1/chat/completions"}
        with contextlib.ExitStack() as routers:
            pids["mushishi"] = routers.enter_context(
                router(processes, config, port, journal=journal)).pid
            if baseline_bin is not None:
                old = free_port()
                pids["baseline"] = routers.enter_context(router(processes, mushishi_config(
                    work / "baseline", old, f"http://127.0.0.1:{backend}/v1",
                    f"http://127.0.0.1:{backend2}/v1", tier=args.tier), old,
                    bindir=baseline_bin, journal=journal)).pid
                targets["baseline"] = f"http://127.0.0.1:{old}/v1/chat/completions"
            if args.paired:
                return paired(args, results, targets, pids, script)
            for number in range(args.rounds):
                row = {}
                # Every other round in reverse order: the machine's load drifts within a
                # round, and whichever is measured first would otherwise always gain by it.
                order = list(targets.items())
                for name, url in (order if number % 2 == 0 else order[::-1]):
                    pid = pids.get(name)
                    before = cpu_seconds(pid) if pid is not None else 0.0
                    run = wrk(url, 16, args.seconds, script)
                    row[f"{name}_c16_rps"] = run["rps"]
                    if pid is not None and run["requests"]:
                        row[f"{name}_cpu_us_per_request"] = \
                            (cpu_seconds(pid) - before) / run["requests"] * 1e6
                    row[f"{name}_c1_p50_ms"] = wrk(url, 1, args.seconds, script)["p50_ms"]
                row["ratio_c16"] = row["mushishi_c16_rps"] / row["passthrough_c16_rps"]
                if baseline_bin is not None:
                    row["vs_baseline_c16"] = row["mushishi_c16_rps"] / row["baseline_c16_rps"]
                    row["cpu_vs_baseline"] = (row["mushishi_cpu_us_per_request"]
                                              / row["baseline_cpu_us_per_request"])
                    row["baseline_added_p50_c1_ms"] = (row["baseline_c1_p50_ms"]
                                                       - row["direct_c1_p50_ms"])
                row["added_p50_c1_ms"] = row["mushishi_c1_p50_ms"] - row["direct_c1_p50_ms"]
                row["passthrough_added_p50_c1_ms"] = (row["passthrough_c1_p50_ms"]
                                                      - row["direct_c1_p50_ms"])
                print(f"round {number + 1}: mushishi/pass-through at c16 "
                      f"{row['ratio_c16']:.2f} ({row['mushishi_c16_rps']:.0f} / "
                      f"{row['passthrough_c16_rps']:.0f} req/s); added p50 at c1 "
                      f"{row['added_p50_c1_ms']:.3f} ms (pass-through "
                      f"{row['passthrough_added_p50_c1_ms']:.3f} ms); CPU per request "
                      f"{row['mushishi_cpu_us_per_request']:.0f} µs (pass-through "
                      f"{row['passthrough_cpu_us_per_request']:.0f} µs)"
                      + (f"; against the baseline at c16 {row['vs_baseline_c16']:.2f} "
                         f"({row['baseline_c16_rps']:.0f} req/s, added p50 at c1 "
                         f"{row['baseline_added_p50_c1_ms']:.3f} ms, CPU per request "
                         f"{row['baseline_cpu_us_per_request']:.0f} µs: "
                         f"{row['cpu_vs_baseline']:.2f})"
                         if baseline_bin is not None else ""), flush=True)
                rounds.append(row)
    finally:
        processes.stop_all()
    results["rounds"] = rounds
    results["median_ratio_c16"] = statistics.median(r["ratio_c16"] for r in rounds)
    results["median_added_p50_c1_ms"] = statistics.median(r["added_p50_c1_ms"] for r in rounds)
    for name in pids:
        results[f"median_{name}_cpu_us_per_request"] = statistics.median(
            r[f"{name}_cpu_us_per_request"] for r in rounds)
    print(f"median: {results['median_ratio_c16']:.2f} of the pass-through at c16, "
          f"{results['median_added_p50_c1_ms']:.3f} ms added p50 at c1; CPU per request "
          f"{results['median_mushishi_cpu_us_per_request']:.0f} µs (pass-through "
          f"{results['median_passthrough_cpu_us_per_request']:.0f} µs)")
    if baseline_bin is not None:
        results["median_vs_baseline_c16"] = statistics.median(
            r["vs_baseline_c16"] for r in rounds)
        results["median_baseline_added_p50_c1_ms"] = statistics.median(
            r["baseline_added_p50_c1_ms"] for r in rounds)
        results["median_cpu_vs_baseline"] = statistics.median(
            r["cpu_vs_baseline"] for r in rounds)
        print(f"median against the baseline: {results['median_vs_baseline_c16']:.2f} of its "
              f"req/s at c16; it adds {results['median_baseline_added_p50_c1_ms']:.3f} ms "
              f"p50 at c1; CPU per request {results['median_cpu_vs_baseline']:.2f} of the "
              f"baseline's ({results['median_baseline_cpu_us_per_request']:.0f} µs)")
    if args.out is not None:
        write_results(results, args.out, "router-overhead")
    return 0


def paired(args: argparse.Namespace, results: dict[str, object], targets: dict[str, str],
           pids: dict[str, int], script: Path) -> int:
    """`--paired`: each round loads both routers at the same time, wrk at 16 connections on
    each, and compares what a request cost each in that same window."""
    rounds = []
    for number in range(args.rounds):
        names = ("mushishi", "baseline")
        before = {name: cpu_seconds(pids[name]) for name in names}
        with ThreadPoolExecutor(len(names)) as pool:
            runs = dict(zip(names, pool.map(
                lambda name: wrk(targets[name], 16, args.seconds, script), names),
                strict=True))
        row = {}
        for name in names:
            row[f"{name}_c16_rps"] = runs[name]["rps"]
            row[f"{name}_cpu_us_per_request"] = \
                (cpu_seconds(pids[name]) - before[name]) / runs[name]["requests"] * 1e6
        row["vs_baseline_c16"] = row["mushishi_c16_rps"] / row["baseline_c16_rps"]
        row["cpu_vs_baseline"] = (row["mushishi_cpu_us_per_request"]
                                  / row["baseline_cpu_us_per_request"])
        print(f"round {number + 1}, both loaded at once: mushishi {row['mushishi_c16_rps']:.0f} "
              f"req/s, {row['mushishi_cpu_us_per_request']:.0f} µs CPU per request; baseline "
              f"{row['baseline_c16_rps']:.0f} req/s, {row['baseline_cpu_us_per_request']:.0f} "
              f"µs; req/s {row['vs_baseline_c16']:.3f}, CPU per request "
              f"{row['cpu_vs_baseline']:.3f} of the baseline's", flush=True)
        rounds.append(row)
    results["paired"] = True
    results["rounds"] = rounds
    for key in ("vs_baseline_c16", "cpu_vs_baseline", "mushishi_cpu_us_per_request",
                "baseline_cpu_us_per_request"):
        results[f"median_{key}"] = statistics.median(r[key] for r in rounds)
    print(f"median, both loaded at once: {results['median_vs_baseline_c16']:.3f} of the "
          f"baseline's req/s at c16; CPU per request {results['median_cpu_vs_baseline']:.3f} "
          f"of the baseline's ({results['median_mushishi_cpu_us_per_request']:.0f} against "
          f"{results['median_baseline_cpu_us_per_request']:.0f} µs)")
    if args.out is not None:
        write_results(results, args.out, "router-overhead", "-paired")
    return 0


if __name__ == "__main__":
    sys.exit(main())
