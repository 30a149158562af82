"""mushishi-egress entry point."""

from __future__ import annotations

import sys

from mushishi.services.egress.app import main_body
from mushishi.shared.daemon import run_daemon


def main() -> int:
    """Run mushishi-egress."""
    return run_daemon("egress", "mushishi-egress: the only way cloud hops leave the box",
                      main_body)


if __name__ == "__main__":
    sys.exit(main())
