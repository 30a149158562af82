"""What the router's per-request journal record costs: this checkout against another.

Every routed request ends with one journal record (`Accounting.finish`: the message, ten
MUSHISHI_* fields, the bound profile, tier and request id, the call site's standard fields
and the redacted form), sent over journald's native datagram protocol. This sends the same
record `--records` times through each checkout's own `_Records` and `JournalHandler` to a
datagram socket that a separate process drains (journald's place), in a process of each
checkout's virtualenv, alternating the two for `--rounds`, and prints the microseconds per
record of each and their ratio per round and as medians (below 1: this checkout is cheaper).

    .venv/bin/python benchmarks/router/journal_record.py --baseline CHECKOUT [--rounds 10]
                                                         [--records 20000] [--out DIR]

CHECKOUT is another checkout with its virtualenv (e.g. a `git worktree` of an earlier
commit after `make venv` there). `overhead.py` measures the whole request instead, but its
routers log to stderr (no journald on a bare machine), so it never sees this path.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.router.run import (  # noqa: E402  (the repository is put on the path first)
    Processes,
    journal_drain,
    machine,
    write_results,
)

# Run in each checkout's interpreter: argv = socket path, number of records. Prints the
# seconds the records took, CPU time of the process (the drain is another process).
SENDER = r"""
import logging, sys, time
from mushishi.shared.journal import bind_fields, setup_logging
from mushishi.services.router.accounting import Accounting, _Records

setup_logging("mushishi-router", socket_path=sys.argv[1])
records = _Records(logging.getLogger("mushishi.router.accounting"), Accounting.finish)
fields = {
    "MUSHISHI_BACKEND": "gpu-chat", "MUSHISHI_MODE": "agent", "MUSHISHI_OUTCOME": "success",
    "MUSHISHI_STATUS": "200", "MUSHISHI_API": "openai", "MUSHISHI_STREAM": "0",
    "MUSHISHI_DURATION_MS": "1.2", "MUSHISHI_OVERHEAD_MS": "0.310",
    "MUSHISHI_FALLBACKS": "0", "MUSHISHI_RETRIES": "0",
}
text = "chat/completions private -> gpu-chat: 200 success in 1.2 ms"
count = int(sys.argv[2])
with bind_fields(MUSHISHI_PROFILE="private", MUSHISHI_TIER="T1",
                 MUSHISHI_REQUEST_ID="0b7f1c2e9a4d4c6b8e2f1a3c5d7e9f01"):
    for _ in range(count // 10):  # warm up
        records.emit(logging.INFO, text, dict(fields))
    started = time.process_time()
    for _ in range(count):
        records.emit(logging.INFO, text, dict(fields))
    print(time.process_time() - started)
"""


def per_record_us(python: Path, socket_path: str, records: int) -> float:
    """Microseconds of the sender's CPU per record, in a fresh process of `python`."""
    result = subprocess.run([str(python), "-c", SENDER, socket_path, str(records)],
                            capture_output=True, text=True, check=True)
    return float(result.stdout) / records * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True,
                        help="another checkout with its .venv (e.g. a git worktree)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--out", type=Path, default=None, help="write the results JSON here")
    args = parser.parse_args()
    pythons = {"head": REPO / ".venv/bin/python",
               "baseline": args.baseline.resolve() / ".venv/bin/python"}
    for name, python in pythons.items():
        if not python.exists():
            print(f"{python} is missing: make venv in the {name} checkout first",
                  file=sys.stderr)
            return 2
    commits = {name: subprocess.run(["git", "-C", str(python.parents[2]), "rev-parse",
                                     "--short", "HEAD"], capture_output=True, text=True,
                                    check=False).stdout.strip()
               for name, python in pythons.items()}
    with tempfile.TemporaryDirectory(prefix="mushishi-journal-bench-") as work:
        socket_path = f"{work}/journal.sock"
        processes = Processes()
        try:
            journal_drain(processes, Path(socket_path))
            rounds = []
            for index in range(args.rounds):
                order = ("head", "baseline") if index % 2 == 0 else ("baseline", "head")
                measured = {name: per_record_us(pythons[name], socket_path, args.records)
                            for name in order}
                measured["ratio"] = measured["head"] / measured["baseline"]
                rounds.append(measured)
                print(f"round {index + 1}: head {measured['head']:.2f} µs, baseline "
                      f"{measured['baseline']:.2f} µs, ratio {measured['ratio']:.3f}",
                      flush=True)
        finally:
            processes.stop_all()
    summary = {name: round(statistics.median(r[name] for r in rounds), 3)
               for name in ("head", "baseline", "ratio")}
    print(f"median per record: head ({commits['head']}) {summary['head']:.2f} µs, baseline "
          f"({commits['baseline']}) {summary['baseline']:.2f} µs; head / baseline "
          f"{summary['ratio']:.3f}")
    if args.out is not None:
        write_results({
            "what": "the router's per-request journal record, sender CPU µs per record, "
                    "this checkout against --baseline, alternated",
            "machine": machine(), "records_per_round": args.records,
            "commits": commits, "median": summary, "rounds": rounds},
            args.out, "journal-record")
    return 0


if __name__ == "__main__":
    sys.exit(main())
