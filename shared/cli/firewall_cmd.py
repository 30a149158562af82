"""`mushishi firewall` (placeholder until the firewall issue lands)."""

from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    """Accept anything: the real arguments arrive with the implementation."""
    parser.add_argument("rest", nargs=argparse.REMAINDER)


def run(args: argparse.Namespace) -> int:
    """Refuse honestly."""
    print("mushishi firewall: not implemented yet (firewall issue)", file=sys.stderr)
    return 69
