"""Exclusive flock(2) locks between processes: one try, or a wait that never blocks the loop.

A lock is held by an open file description, so it ends when the holder closes the file or
dies; nothing has to clean up after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import IO, Any


class LockNotTaken(Exception):
    """The lock was not taken; the message names the lock file."""


class LockTimeout(LockNotTaken, TimeoutError):
    """Another process held the lock for the whole wait."""


class LockWaitStopped(LockNotTaken):
    """A stop was requested while waiting for the lock."""


def try_exclusive(file: int | IO[Any]) -> bool:
    """Take an exclusive flock on an open file (descriptor) if nobody holds it; never waits."""
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


async def _pause(seconds: float, sleep: Callable[[float], Awaitable[None]],
                 stopping: asyncio.Event | None) -> None:
    """`sleep(seconds)`, cut short by a stop request."""
    if stopping is None:
        await sleep(seconds)
        return
    pause = asyncio.ensure_future(sleep(seconds))
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({pause, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        pause.cancel()
        stop.cancel()


@contextlib.asynccontextmanager
async def exclusive_lock(path: Path, *, wait_s: float, poll_s: float,
                         sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                         stopping: asyncio.Event | None = None,
                         on_wait: Callable[[], None] | None = None) -> AsyncIterator[None]:
    """Hold an exclusive flock on `path` (created with its directory) for the block.

    While another process holds it, try again every `poll_s` (through `sleep`, so tests
    inject time) for up to `wait_s` of waiting, then raise LockTimeout; a set `stopping`
    ends the wait at once with LockWaitStopped. `on_wait` is called once, when the first
    try finds the lock held.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        waited = 0.0
        while not try_exclusive(handle):
            if waited == 0.0 and on_wait is not None:
                on_wait()
            if stopping is not None and stopping.is_set():
                raise LockWaitStopped(f"stopped while waiting for {path}")
            if waited >= wait_s:
                raise LockTimeout(f"{path} held for {wait_s:.0f}s")
            await _pause(poll_s, sleep, stopping)
            waited += poll_s
        yield
