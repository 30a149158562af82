"""The body of mushishi-backup: signals, the event loop, and the chosen action."""

from __future__ import annotations

import argparse
import asyncio
import signal

from mushishi.services.backup.app import Deps, run_backup, run_check
from mushishi.shared.config import LoadedConfig
from mushishi.shared.notify import Notifier


async def _main(action: str, loaded: LoadedConfig, notifier: Notifier) -> int:
    deps = Deps(notifier=notifier, dotenv=loaded.dotenv)
    loop = asyncio.get_running_loop()

    def stop(signal_number: int) -> None:
        deps.signal_number = deps.signal_number or signal_number
        deps.stopping.set()

    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stop, int(number))
    if action == "run":
        return await run_backup(loaded.settings, deps)
    return await run_check(loaded.settings, deps)


def body(args: argparse.Namespace, loaded: LoadedConfig, notifier: Notifier) -> int:
    """Run the action; the exit status says whether it needs attention."""
    return asyncio.run(_main(args.action, loaded, notifier))
