"""The one place mushishi-backup runs processes: exit codes, stop requests, hidden secrets.

A stop request (SIGTERM from systemd, or Ctrl-C) is forwarded to the child as SIGINT, the
signal on which restic removes its lock and exits; only a child that ignores it for
`grace_s` is killed. Every argv, stdout and stderr that leaves this module has the secrets
replaced, so a password can never reach the journal or a result file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

log = logging.getLogger("mushishi.backup.process")

REDACTED = "<redacted>"
_STREAM_LIMIT = 1 << 20   # longest line read from a child (restic JSON lines are short)
_STDERR_KEEP = 64 << 10   # stderr kept per process (its tail)


@dataclass(frozen=True, slots=True)
class ProcessResult:
    """A finished process; its texts are already redacted."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    duration_s: float
    interrupted: bool = False
    timed_out: bool = False


def redact(text: str, secrets: Sequence[str]) -> str:
    """`text` with every secret replaced by <redacted>."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


class Processes:
    """Runs commands with a fixed environment, forwarding stop requests as SIGINT."""

    def __init__(self, *, env: Mapping[str, str], secrets: Sequence[str] = (),
                 stopping: asyncio.Event | None = None, grace_s: float = 120.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.env = dict(env)
        self.secrets = [s for s in secrets if s]
        self.stopping = stopping or asyncio.Event()
        self.grace_s = grace_s
        self.monotonic = monotonic

    def shown(self, argv: Sequence[str]) -> str:
        """An argv for logs."""
        return redact(" ".join(argv), self.secrets)

    async def run(self, argv: Sequence[str], *, on_line: Callable[[str], None] | None = None,
                  keep_stdout: bool = True, limit_s: float | None = None) -> ProcessResult:
        """Run `argv` to completion (or until stopped); never raises for the child's failure."""
        argv = list(argv)
        started = self.monotonic()
        if self.stopping.is_set():
            return ProcessResult(argv, 130, "", "not started: stop requested", 0.0, True)
        log.debug("running %s", self.shown(argv))
        try:
            child = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=self.env, start_new_session=True,
                limit=_STREAM_LIMIT,
            )
        except OSError as error:
            message = f"cannot run {argv[0]}: {error.strerror or error}"
            return ProcessResult(argv, 127, "", message, self.monotonic() - started)

        stdout_parts: list[str] = []
        stderr_tail = bytearray()

        async def read_stdout() -> None:
            assert child.stdout is not None
            while True:
                try:
                    raw = await child.stdout.readline()
                except ValueError:  # a line over the limit: skip it, keep reading
                    continue
                if not raw:
                    return
                line = raw.decode("utf-8", "replace")
                if keep_stdout:
                    stdout_parts.append(line)
                if on_line is not None:
                    on_line(line.rstrip("\n"))

        async def read_stderr() -> None:
            assert child.stderr is not None
            while True:
                chunk = await child.stderr.read(65536)
                if not chunk:
                    return
                stderr_tail.extend(chunk)
                del stderr_tail[:-_STDERR_KEEP]

        readers = asyncio.gather(read_stdout(), read_stderr())
        waiter = asyncio.ensure_future(child.wait())
        stop = asyncio.ensure_future(self.stopping.wait())
        interrupted = timed_out = False
        try:
            done, _ = await asyncio.wait({waiter, stop}, timeout=limit_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if waiter not in done:
                interrupted = stop in done
                timed_out = not interrupted
                await self._interrupt(child, waiter)
        finally:
            stop.cancel()
            if not waiter.done():  # we are being cancelled ourselves
                await self._interrupt(child, waiter)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(readers, timeout=10)
        returncode = waiter.result()
        return ProcessResult(
            argv, returncode,
            redact("".join(stdout_parts), self.secrets),
            redact(stderr_tail.decode("utf-8", "replace"), self.secrets),
            self.monotonic() - started, interrupted, timed_out,
        )

    async def _interrupt(self, child: asyncio.subprocess.Process,
                         waiter: asyncio.Future[int]) -> None:
        """SIGINT (restic cleans up and releases its lock), then SIGKILL after the grace."""
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout=self.grace_s)
        except TimeoutError:
            log.warning("%s ignored SIGINT for %.0fs; killing it", child.pid, self.grace_s)
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await waiter

