"""mushishi-router entry point."""

from __future__ import annotations

import sys

from mushishi.shared.daemon import not_implemented


def main() -> int:
    """Run mushishi-router."""
    return not_implemented("router", "router issue")


if __name__ == "__main__":
    sys.exit(main())
