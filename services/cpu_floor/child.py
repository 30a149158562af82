"""The llama-server child process: started with its own journal stream, stopped gracefully.

systemd kills the whole cgroup when the unit stops; PR_SET_PDEATHSIG also takes the child
down when the supervisor dies outside systemd (a developer running it by hand).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence

from mushishi.shared.journal import open_stream
from mushishi.shared.processes import child_environment

PR_SET_PDEATHSIG = 1
# Looked up once here: after fork, the child must only call an already resolved function.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


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
