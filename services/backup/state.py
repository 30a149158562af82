"""mushishi-backup's state directory: the run lock, the result files and their history.

    run.lock        flock(2): one `mushishi-backup` (run or check) at a time on this machine
    last.json       the last `run`'s result record (check.json: the last `check`'s)
    history.jsonl   one line per run or check, the newest HISTORY_LINES kept

Every file is replaced atomically, so a reader (the watchdog, `mushishi status`) sees the
old record or the new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from mushishi.services.backup.core import Fatal
from mushishi.shared.files import read_json, replace_atomically, write_json
from mushishi.shared.locks import LockTimeout, LockWaitStopped, exclusive_lock

log = logging.getLogger("mushishi.backup")

RUN_RESULT = "last.json"
CHECK_RESULT = "check.json"
HISTORY = "history.jsonl"
HISTORY_LINES = 500
LOCK_POLL_S = 1.0


@contextlib.asynccontextmanager
async def run_lock(state_dir: Path, wait_s: float, stopping: asyncio.Event
                   ) -> AsyncIterator[None]:
    """One `mushishi-backup` (run or check) at a time on this machine."""
    path = state_dir / "run.lock"
    try:
        async with exclusive_lock(
                path, wait_s=wait_s, poll_s=LOCK_POLL_S, stopping=stopping,
                on_wait=lambda: log.info("another mushishi-backup is running; waiting up to "
                                         "%.0fs", wait_s)):
            yield
    except LockWaitStopped:
        raise Fatal("stopped while waiting for the other mushishi-backup") from None
    except LockTimeout:
        raise Fatal(f"another mushishi-backup held {path} for {wait_s:.0f}s "
                    f"(backup.lock_wait_s)") from None


def previous_result(state_dir: Path, name: str) -> dict[str, Any] | None:
    """The record the last run (or check) left, if any is readable."""
    return read_json(state_dir / name)


def append_history(path: Path, record: dict[str, Any], keep: int = HISTORY_LINES) -> None:
    """Append one line to history.jsonl, keeping the newest `keep` lines."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = []
    lines.append(json.dumps(record, sort_keys=True))
    replace_atomically(path, "\n".join(lines[-keep:]) + "\n", 0o640)


def record_result(state_dir: Path, name: str, record: dict[str, Any]) -> None:
    """The result file `name` and its history line."""
    state_dir.mkdir(parents=True, exist_ok=True)
    write_json(state_dir / name, record, 0o640, pretty=True)
    append_history(state_dir / HISTORY, record)
