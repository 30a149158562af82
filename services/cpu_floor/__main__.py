"""mushishi-cpu-floor entry point."""

from __future__ import annotations

import sys

from mushishi.services.cpu_floor.app import main

if __name__ == "__main__":
    sys.exit(main())
