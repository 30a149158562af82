"""mushishi-watchdog entry point."""

from __future__ import annotations

import sys

from mushishi.shared.daemon import not_implemented


def main() -> int:
    """Run mushishi-watchdog."""
    return not_implemented("watchdog", "watchdog issue")


if __name__ == "__main__":
    sys.exit(main())
