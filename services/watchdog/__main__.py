"""mushishi-watchdog entry point: one pass of the outcome checks (mushishi-watchdog.service,
daily timer), or, with --follow-sovereignty, the live watch of the sovereignty layers
(mushishi-sovereignty.service)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from mushishi.shared.config import LoadedConfig
from mushishi.shared.daemon import run_daemon
from mushishi.shared.notify import Notifier


def configure(parser: argparse.ArgumentParser) -> None:
    """--follow-sovereignty."""
    parser.add_argument("--follow-sovereignty", action="store_true",
                        help="follow every sovereignty layer and alert on each change "
                        "(long-running: mushishi-sovereignty.service)")


def body(args: argparse.Namespace, loaded: LoadedConfig, notifier: Notifier) -> int:
    """One watchdog run, or the sovereignty watch until SIGTERM."""
    from mushishi.services.watchdog.app import Deps, run_watchdog

    deps = Deps(notifier=notifier, dotenv=loaded.dotenv)
    if args.follow_sovereignty:
        from mushishi.services.watchdog.sovereignty import follow_sovereignty
        from mushishi.shared.daemon import stop_on_signals

        async def follow() -> int:
            return await follow_sovereignty(loaded.settings, deps, stop_on_signals())

        return asyncio.run(follow())
    return asyncio.run(run_watchdog(loaded.settings, deps))


def main(argv: Sequence[str] | None = None) -> int:
    """Run mushishi-watchdog."""
    return run_daemon("watchdog", "outcome checks (backups, disks, units, CPU floor, cloud "
                      "share, GPU, speed, sovereignty) and ntfy alerts", body, argv,
                      configure=configure)


if __name__ == "__main__":
    sys.exit(main())
