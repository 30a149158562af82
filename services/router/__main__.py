"""mushishi-router entry point."""

from __future__ import annotations

import sys

from mushishi.services.router.app import main_body
from mushishi.shared.daemon import run_daemon


def main() -> int:
    """Run mushishi-router."""
    return run_daemon("router", "mushishi-router: OpenAI/Anthropic-compatible router by profile",
                      main_body)


if __name__ == "__main__":
    sys.exit(main())
