"""Other processes: asked about by PID, and the children a daemon supervises."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping

from mushishi.shared.activation import LISTEN_ENV
from mushishi.shared.notify import NOTIFY_ENV

# Set by systemd for every process of a unit (systemd.exec(5)): "we run as a unit".
INVOCATION_ENV = "INVOCATION_ID"
# A supervisor's sd_notify and socket-activation variables are not its child's business.
SUPERVISOR_ONLY_ENV = (*NOTIFY_ENV, *LISTEN_ENV, INVOCATION_ENV)


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists in our PID namespace (also another user's)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """A supervisor's environment minus what belongs to it alone (readiness is ours)."""
    return {k: v for k, v in environ.items() if k not in SUPERVISOR_ONLY_ENV}


async def terminate(process: asyncio.subprocess.Process, grace_s: float) -> int:
    """SIGTERM (and SIGCONT, in case it was stopped), then SIGKILL after `grace_s`."""
    if process.returncode is not None:
        return process.returncode
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
        process.send_signal(signal.SIGCONT)
    try:
        async with asyncio.timeout(grace_s):
            return await process.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        return await process.wait()
