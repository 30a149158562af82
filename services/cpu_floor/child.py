"""The llama-server child process: started with its own journal stream, stopped gracefully.

systemd kills the whole cgroup when the unit stops; PR_SET_PDEATHSIG also takes the child
down when the supervisor dies outside systemd (a developer running it by hand).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence

from mushishi.shared.journal import open_stream

PR_SET_PDEATHSIG = 1
# Looked up once here: after fork, the child must only call an already resolved function.
_prctl = ctypes.CDLL(None, use_errno=True).prctl

# The supervisor's sd_notify and socket-activation variables are not the child's business.
_PRIVATE_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
                "LISTEN_FDNAMES", "INVOCATION_ID")


def _die_with_parent() -> None:
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def describe_exit(returncode: int) -> str:
    """'exited with status 1' or 'was killed by SIGKILL'."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with status {returncode}"


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The supervisor's environment minus what belongs to it alone."""
    return {k: v for k, v in environ.items() if k not in _PRIVATE_ENV}


async def spawn(argv: Sequence[str], environ: Mapping[str, str],
                identifier: str = "llama-server") -> asyncio.subprocess.Process:
    """Start llama-server; its output goes to the journal under `identifier`."""
    stream = open_stream(identifier)
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=stream,  # None (inherit) without a journal
            stderr=stream,
            env=child_environment(environ),
            preexec_fn=_die_with_parent,
        )
    finally:
        if stream is not None:
            os.close(stream)


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
