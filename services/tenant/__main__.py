"""mushishi-tenant entry point."""

from __future__ import annotations

import sys

from mushishi.shared.daemon import not_implemented


def main() -> int:
    """Run mushishi-tenant."""
    return not_implemented("tenant", "GPU-mode manager issue")


if __name__ == "__main__":
    sys.exit(main())
