"""mushishi-watchdog entry point (mushishi-watchdog.service, daily timer)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from mushishi.shared.config import LoadedConfig
from mushishi.shared.daemon import run_daemon
from mushishi.shared.notify import Notifier


def body(args: argparse.Namespace, loaded: LoadedConfig, notifier: Notifier) -> int:
    """One watchdog run."""
    from mushishi.services.watchdog.app import Deps, run_watchdog

    return asyncio.run(run_watchdog(loaded.settings, Deps(notifier=notifier,
                                                           dotenv=loaded.dotenv)))


def main(argv: Sequence[str] | None = None) -> int:
    """Run mushishi-watchdog."""
    return run_daemon("watchdog", "outcome checks (backups, disks, units, CPU floor, cloud "
                      "share, GPU, speed) and ntfy alerts", body, argv)


if __name__ == "__main__":
    sys.exit(main())
