"""mushishi-cpu-floor entry point."""

from __future__ import annotations

import sys

from mushishi.shared.daemon import not_implemented


def main() -> int:
    """Run mushishi-cpu-floor."""
    return not_implemented("cpu-floor", "CPU floor issue")


if __name__ == "__main__":
    sys.exit(main())
