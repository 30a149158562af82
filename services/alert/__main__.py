"""mushishi-alert entry point: `mushishi-alert UNIT` (mushishi-alert@UNIT.service)."""

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
    parser.add_argument("unit", help="the unit that failed (%%i of mushishi-alert@.service)")


def body(args: argparse.Namespace, loaded: LoadedConfig, notifier: Notifier) -> int:
    """One immediate alert."""
    from mushishi.services.watchdog.alert import run_alert
    from mushishi.services.watchdog.app import Deps

    return asyncio.run(run_alert(loaded.settings, args.unit,
                                 Deps(notifier=notifier, dotenv=loaded.dotenv)))


def main(argv: Sequence[str] | None = None) -> int:
    """Run mushishi-alert."""
    return run_daemon("alert", "one immediate ntfy alert for a failed unit, with its journal "
                      "tail", body, argv, configure)


if __name__ == "__main__":
    sys.exit(main())
