"""`mushishi bench`: tokens/s of a fixed prompt set against profiles (through the router) or
local backends (directly), appended to the results CSV with a regression flag.

    mushishi bench                      the targets of [bench] (default: every local
                                        backend running in the current GPU mode)
    mushishi bench --profile private    through the router, as a client would ask
    mushishi bench --backend cpu        the backend directly

Exit status: 0 when every target was measured (regressions are flagged in the CSV, where the
watchdog finds them; `--fail-on-regression` makes them exit 3), 1 when a target could not
be measured, 78 on an invalid config.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from mushishi.ctl.settings import EX_CONFIG, settings_or_report
from mushishi.services.bench.app import run_bench
from mushishi.services.bench.core import Target, describe
from mushishi.services.bench.results import ResultsError
from mushishi.shared.config.observability import bench_results, parse_target
from mushishi.shared.credentials import find_credential
from mushishi.shared.notify import Notifier


def configure(parser: argparse.ArgumentParser) -> None:
    """--profile/--backend (repeatable), --max-tokens, --repeats, --results, --json."""
    parser.add_argument("--profile", action="append", default=[], metavar="NAME",
                        help="benchmark a profile through the router (repeatable)")
    parser.add_argument("--backend", action="append", default=[], metavar="NAME",
                        help="benchmark a local backend directly (repeatable)")
    parser.add_argument("--max-tokens", type=int, metavar="N",
                        help="completion tokens per prompt (default: bench.max_tokens)")
    parser.add_argument("--repeats", type=int, metavar="N",
                        help="times the prompt set is sent (default: bench.repeats)")
    parser.add_argument("--results", metavar="CSV",
                        help="results file (default: bench.results, else watchdog.bench_results); "
                        "the textfile is only "
                        "written for the default file")
    parser.add_argument("--config", metavar="PATH", help="config file")
    parser.add_argument("--json", action="store_true", help="print the new rows as JSON")
    parser.add_argument("--fail-on-regression", action="store_true",
                        help="exit 3 when a target regressed")


def run(args: argparse.Namespace) -> int:
    """Measure, append, report."""
    settings = settings_or_report(args.config)
    if settings is None:
        return EX_CONFIG
    bench = settings.bench
    requested: list[Target] = [Target("profile", n) for n in args.profile] + [
        Target("backend", n) for n in args.backend]
    if not requested:
        requested = [Target(*parse_target(t)) for t in bench.targets]
    for value, name in ((args.max_tokens, "--max-tokens"), (args.repeats, "--repeats")):
        if value is not None and value < 1:
            print(f"mushishi bench: {name} must be at least 1", file=sys.stderr)
            return 2
    api_key = None
    if bench.api_key_credential:
        found = find_credential(bench.api_key_credential)
        api_key = found.value if found else None
        if found is None and any(t.kind == "profile" for t in requested):
            print(f"mushishi bench: credential {bench.api_key_credential!r} "
                  "(bench.api_key_credential) not found; trying the router's unix_peers "
                  "mapping instead", file=sys.stderr)
    notifier = Notifier()
    terminal = sys.stderr.isatty()

    def progress(text: str) -> None:
        notifier.status(text)
        if terminal:
            print(f"… {text}", file=sys.stderr, flush=True)

    results_path = Path(args.results) if args.results else Path(bench_results(settings))
    try:
        outcome = asyncio.run(run_bench(
            settings, requested, results_path=results_path,
            textfile_dir=None if args.results else bench.textfile_dir, api_key=api_key,
            max_tokens=args.max_tokens or bench.max_tokens,
            repeats=args.repeats or bench.repeats, progress=progress))
    except ResultsError as error:
        print(f"mushishi bench: {error}", file=sys.stderr)
        return 1
    for skip in outcome.skipped:
        print(f"skipped {skip.target.label}: {skip.reason}")
    if args.json:
        print(json.dumps([r.row for r in outcome.results], indent=2))
    else:
        for result in outcome.results:
            print(describe(result, bench.regression_ratio))
    for target, reason in outcome.failed:
        print(f"mushishi bench: {target.label} not measured: {reason}", file=sys.stderr)
    if outcome.textfile_error:
        print(f"mushishi bench: {outcome.textfile_error}", file=sys.stderr)
    if not outcome.results and not outcome.failed:
        print("mushishi bench: nothing to measure (every target was skipped)", file=sys.stderr)
    notifier.status(f"{len(outcome.results)} measured, {len(outcome.failed)} failed, "
                    f"{sum(r.regression for r in outcome.results)} regression(s)")
    notifier.barrier()  # the unit's last STATUS= line must reach systemd before we exit
    if outcome.failed:
        return 1
    if args.fail_on_regression and any(r.regression for r in outcome.results):
        return 3
    return 0
