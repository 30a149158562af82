"""mushishi-backup entry point: `run` (weekly timer) or `check` (monthly timer)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mushishi.shared.daemon import run_daemon


def configure(parser: argparse.ArgumentParser) -> None:
    """The two actions of the two units."""
    parser.add_argument("action", choices=["run", "check"],
                        help="run: backup, retention and restore verification; "
                        "check: restic check with a read-data subset")


def main(argv: Sequence[str] | None = None) -> int:
    """Run mushishi-backup."""
    from mushishi.services.backup.main import body

    return run_daemon("backup", "restic backups of what cannot be downloaded again, with "
                      "retention and restore verification", body, argv, configure)


if __name__ == "__main__":
    sys.exit(main())
