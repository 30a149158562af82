"""mushishi-alert entry point: `mushishi-alert NAME` (mushishi-alert@NAME.service, started by
`OnFailure=mushishi-alert@%N.service`; NAME is the failed unit without `.service`).

The work is the watchdog's (services/watchdog/failed_unit.py): it shares the watchdog's
outbox, dedup state and lock.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from mushishi.shared.config import LoadedConfig
from mushishi.shared.daemon import run_daemon
from mushishi.shared.notify import Notifier


def configure(parser: argparse.ArgumentParser) -> None:
    """The failed unit."""
    parser.add_argument("unit", help="the unit that failed, without `.service` (%%i of "
                        "mushishi-alert@.service) or with its type suffix")


def body(args: argparse.Namespace, loaded: LoadedConfig, notifier: Notifier) -> int:
    """One immediate alert."""
    from mushishi.services.watchdog.app import Deps
    from mushishi.services.watchdog.failed_unit import alert_failed_unit

    return asyncio.run(alert_failed_unit(loaded.settings, args.unit,
                                         Deps(notifier=notifier, dotenv=loaded.dotenv)))


def main(argv: Sequence[str] | None = None) -> int:
    """Run mushishi-alert."""
    return run_daemon("alert", "one immediate ntfy alert for a failed unit, with its journal "
                      "tail", body, argv, configure)


if __name__ == "__main__":
    sys.exit(main())
