"""flock waiting between real processes: a child holds the lock with a bare fcntl.flock (the
independent oracle), this process tries, waits, times out or is stopped."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mushishi.shared.locks import (
    LockTimeout,
    LockWaitStopped,
    exclusive_lock,
    try_exclusive,
)

# Takes the lock, says so, and holds it until stdin closes (or it is killed).
HOLDER = """
import fcntl, sys
handle = open(sys.argv[1], "a")
fcntl.flock(handle, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""

# Tries the lock once without waiting and prints whether it got it.
PROBE = """
import fcntl, sys
handle = open(sys.argv[1], "a")
try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("free")
except BlockingIOError:
    print("busy")
"""


class Holder:
    """A child process holding the lock until released or killed."""

    def __init__(self, path: Path) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "held"

    def release(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Holder]:
    held = Holder(tmp_path / "run.lock")
    yield held
    if held.process.poll() is None:
        held.process.kill()
        held.process.wait(timeout=30)


def probe(path: Path) -> str:
    return subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True,
                          text=True, check=True, timeout=60).stdout.strip()


def test_try_exclusive_is_refused_while_another_process_holds_the_lock(
        tmp_path: Path, holder: Holder) -> None:
    with (tmp_path / "run.lock").open("a") as handle:
        assert try_exclusive(handle) is False
        holder.release()
        assert try_exclusive(handle) is True
        assert probe(tmp_path / "run.lock") == "busy"


def test_try_exclusive_takes_a_raw_descriptor_and_the_lock_dies_with_its_holder(
        tmp_path: Path, holder: Holder) -> None:
    descriptor = os.open(tmp_path / "run.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        assert try_exclusive(descriptor) is False
        holder.process.send_signal(signal.SIGKILL)  # a crash needs no clean-up
        holder.process.wait(timeout=30)
        assert try_exclusive(descriptor) is True
    finally:
        os.close(descriptor)


async def test_exclusive_lock_waits_for_the_holder_then_holds_until_the_block_ends(
        tmp_path: Path, holder: Holder) -> None:
    path = tmp_path / "run.lock"
    waits: list[str] = []
    loop = asyncio.get_running_loop()
    loop.call_later(0.3, holder.release)
    async with exclusive_lock(path, wait_s=30, poll_s=0.05,
                              on_wait=lambda: waits.append("waiting")):
        assert holder.process.poll() is not None
        assert await asyncio.to_thread(probe, path) == "busy"
    assert waits == ["waiting"]
    assert await asyncio.to_thread(probe, path) == "free"


async def test_exclusive_lock_free_lock_is_taken_without_waiting_and_creates_its_directory(
        tmp_path: Path) -> None:
    path = tmp_path / "state" / "alerts.lock"
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async with exclusive_lock(path, wait_s=5, poll_s=0.2, sleep=sleep,
                              on_wait=lambda: slept.append(-1)):
        assert await asyncio.to_thread(probe, path) == "busy"
    assert slept == []


async def test_exclusive_lock_gives_up_after_wait_s_of_injected_sleeps(
        tmp_path: Path, holder: Holder) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    path = tmp_path / "run.lock"
    with pytest.raises(LockTimeout, match="^" + re.escape(f"{path} held for 1s") + "$") as raised:
        async with exclusive_lock(path, wait_s=1.0, poll_s=0.25, sleep=sleep):
            raise AssertionError("the lock is held by the child")
    assert isinstance(raised.value, TimeoutError)
    assert slept == [0.25, 0.25, 0.25, 0.25]


async def test_exclusive_lock_stop_request_ends_the_wait_at_once(
        tmp_path: Path, holder: Holder) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.call_later(0.1, stopping.set)
    started = loop.time()
    with pytest.raises(LockWaitStopped, match="stopped while waiting for"):
        async with exclusive_lock(tmp_path / "run.lock", wait_s=3600, poll_s=600,
                                  stopping=stopping):
            raise AssertionError("the lock is held by the child")
    assert loop.time() - started < 30  # the 600 s pause was cut short by the stop
    assert holder.process.poll() is None
