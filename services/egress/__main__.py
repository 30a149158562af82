"""mushishi-egress entry point."""

from __future__ import annotations

import sys

from mushishi.shared.daemon import not_implemented


def main() -> int:
    """Run mushishi-egress."""
    return not_implemented("egress", "egress issue")


if __name__ == "__main__":
    sys.exit(main())
