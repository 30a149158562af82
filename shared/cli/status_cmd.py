"""`mushishi status` (placeholder until the observability issue lands)."""

from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    """Accept anything: the real arguments arrive with the implementation."""
    parser.add_argument("rest", nargs=argparse.REMAINDER)


def run(args: argparse.Namespace) -> int:
    """Refuse honestly."""
    print("mushishi status: not implemented yet (observability issue)", file=sys.stderr)
    return 69
