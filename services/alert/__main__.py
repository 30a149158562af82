"""mushishi-alert entry point."""

from __future__ import annotations

import sys

from mushishi.shared.daemon import not_implemented


def main() -> int:
    """Run mushishi-alert."""
    return not_implemented("alert", "watchdog issue")


if __name__ == "__main__":
    sys.exit(main())
