"""mushishi-gpud entry point."""

from __future__ import annotations

import sys

from mushishi.shared.daemon import not_implemented


def main() -> int:
    """Run mushishi-gpud."""
    return not_implemented("gpud", "GPU-mode manager issue")


if __name__ == "__main__":
    sys.exit(main())
