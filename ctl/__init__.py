"""`mushishi`: the operator's command line. Each subcommand lives in its own module.

Only the chosen subcommand's module is imported, so `mushishi status` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module providing configure(parser) and run(args) -> int, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "status": ("mushishi.ctl.status_cmd", "one screen: mode, VRAM, backends, budgets, "
               "backups, watchdog"),
    "mode": ("mushishi.ctl.mode_cmd", "show or switch the GPU mode"),
    "hold": ("mushishi.ctl.hold_cmd", "run a command holding a GPU mode"),
    "route": ("mushishi.ctl.route_cmd", "which backend would answer a profile now, and why"),
    "audit": ("mushishi.ctl.audit_cmd", "what left the box: every request the egress handled"),
    "config": ("mushishi.ctl.config_cmd", "check a config file and show effective values"),
    "firewall": ("mushishi.ctl.firewall_cmd", "render, apply or verify the firewall"),
    "install": ("mushishi.ctl.install_cmd", "install units, D-Bus policy, user, dirs"),
    "bench": ("mushishi.ctl.bench_cmd", "tokens/s regression benchmark"),
    "backup": ("mushishi.ctl.backup_cmd", "list or restore snapshots, from the box's "
               "repository or an off-box copy"),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mushishi", description="Control plane of a self-hosted, privacy-first AI box.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a subcommand; returns its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser = _top_parser()
        if not argv or argv[0] in ("-h", "--help"):
            parser.print_help()
            return 0 if argv else 2
        parser.error(f"unknown command {argv[0]!r}")
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"mushishi {name}", description=COMMANDS[name][1])
    module.configure(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.run(args))
    except KeyboardInterrupt:
        return 130
