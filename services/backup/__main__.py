"""mushishi-backup entry point."""

from __future__ import annotations

import sys

from mushishi.shared.daemon import not_implemented


def main() -> int:
    """Run mushishi-backup."""
    return not_implemented("backup", "backup issue")


if __name__ == "__main__":
    sys.exit(main())
