"""`mushishi status`: one screen (or `--json`) of the whole box, fast even when a daemon is
down or hung: every source is read concurrently with a short timeout, and one that does not
answer is named, never waited for.

Exit status: 0 when every source answered and nothing needs attention, 1 otherwise (the
problems are listed), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
from datetime import UTC, datetime

from mushishi.ctl.status.gather import collect
from mushishi.ctl.status.report import build_report, exit_status
from mushishi.ctl.status.screen import render
from mushishi.shared.config import (
    ConfigError,
    MushishiSettings,
    load_settings,
    resolve_config_path,
)
from mushishi.shared.readings import Reading, error, ok

DEFAULT_TIMEOUT_S = 0.5


def configure(parser: argparse.ArgumentParser) -> None:
    """--json, --config, --timeout, --color."""
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--config", metavar="PATH",
                        help="config file (default: $MUSHISHI_CONFIG, else "
                        "/etc/mushishi/mushishi.toml)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                        help="how long each source may take to answer (default "
                        f"{DEFAULT_TIMEOUT_S:g}); a source that takes longer is reported "
                        "as not answering")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                        help="colour the screen: auto (on a terminal, unless NO_COLOR is "
                        "set), always, never")


def use_colour(choice: str, stream_is_tty: bool, environ: dict[str, str]) -> bool:
    """Colour on a terminal only, and never when NO_COLOR is set (https://no-color.org)."""
    if choice == "always":
        return True
    if choice == "never" or environ.get("NO_COLOR"):
        return False
    return stream_is_tty and environ.get("TERM") != "dumb"


def _settings(config: str | None) -> tuple[MushishiSettings, Reading[None]]:
    path = resolve_config_path(config)
    try:
        return load_settings(path), ok(None, str(path))
    except ConfigError as problem:
        return MushishiSettings(), error(
            f"{problem.one_line()} (showing defaults; `mushishi config check {path}`)")


def run(args: argparse.Namespace) -> int:
    """Gather, report, exit 0 (all well) or 1 (something needs attention)."""
    if args.timeout <= 0:
        print("mushishi status: --timeout must be positive", file=sys.stderr)
        return 2
    settings, config_reading = _settings(args.config)
    now = datetime.now(UTC)
    readings = asyncio.run(collect(settings, now=now, limit_s=args.timeout))
    readings = {"config": config_reading, **readings}
    report = build_report(readings, now, socket.gethostname())
    if args.json:
        print(json.dumps(report.data, indent=2, ensure_ascii=False))
    else:
        colour = use_colour(args.color, sys.stdout.isatty(), dict(os.environ))
        print(render(report, colour=colour))
    return exit_status(report)
