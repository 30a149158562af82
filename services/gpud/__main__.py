"""mushishi-gpud: the GPU-mode manager (io.mushishi.GpuMode1 on the system bus)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from mushishi.shared.config import LoadedConfig
from mushishi.shared.daemon import run_daemon
from mushishi.shared.notify import Notifier


def _body(args: argparse.Namespace, loaded: LoadedConfig, notifier: Notifier) -> int:
    from mushishi.services.gpud.app import serve

    return asyncio.run(serve(loaded, notifier))


def main(argv: Sequence[str] | None = None) -> int:
    """Run mushishi-gpud."""
    return run_daemon("gpud", "GPU-mode manager: io.mushishi.GpuMode1 on the system bus",
                      _body, argv)


if __name__ == "__main__":
    sys.exit(main())
