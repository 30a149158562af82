"""What `apply` remembers between commands, under [firewall].state_dir (adapter).

    previous.nft    table inet mushishi as it was before the last apply (absent: no table)
    applied.nft     the ruleset the last apply loaded
    confirmed.nft   the last confirmed ruleset; `mushishi firewall restore` loads it at boot
    pending.json    an apply waiting for confirmation: token, deadline, guard pid
    last.json       the last change: time, action, detail, sha256 of the ruleset
    lock            flock(2) serialising apply, confirm, rollback and the guard

Every file is replaced atomically (write, fsync, rename), so a crash leaves the old or the
new version, never half of one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mushishi.shared.files import replace_atomically, write_json

PREVIOUS = "previous.nft"
APPLIED = "applied.nft"
CONFIRMED = "confirmed.nft"
PENDING = "pending.json"
LAST = "last.json"
NO_TABLE_MARKER = "# mushishi: there was no table inet mushishi\n"


def sha256(text: str) -> str:
    """Hex digest of a ruleset, how last.json and verify name one."""
    return hashlib.sha256(text.encode()).hexdigest()


def iso(timestamp: float) -> str:
    """ISO 8601 UTC, seconds precision."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


@dataclass(frozen=True, slots=True)
class Pending:
    """An applied ruleset waiting for `mushishi firewall confirm`."""

    token: str
    applied_at: float
    deadline: float
    guard_pid: int
    sha256: str


class StateDir:
    """The firewall's state directory."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def ensure(self) -> None:
        """Create the directory (mode 0750): rulesets say what is open, keep them private."""
        self.path.mkdir(mode=0o750, parents=True, exist_ok=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the state lock for the block (blocks while another command holds it)."""
        self.ensure()
        with open(self.path / "lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def write(self, name: str, text: str) -> None:
        """Replace `name` atomically."""
        self.ensure()
        replace_atomically(self.path / name, text, 0o640)

    def read(self, name: str) -> str | None:
        """The text of `name`, or None if absent."""
        try:
            return (self.path / name).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def remove(self, name: str) -> None:
        """Delete `name` if present."""
        (self.path / name).unlink(missing_ok=True)

    def pending(self) -> Pending | None:
        """The apply waiting for confirmation, if any."""
        text = self.read(PENDING)
        return Pending(**json.loads(text)) if text else None

    def set_pending(self, pending: Pending) -> None:
        """Record an apply waiting for confirmation."""
        self.ensure()
        write_json(self.path / PENDING, asdict(pending), 0o640, pretty=True)

    def last(self) -> dict[str, Any] | None:
        """The last change recorded, if any."""
        text = self.read(LAST)
        return json.loads(text) if text else None

    def record(self, now: float, action: str, detail: str, ruleset_sha256: str = "") -> None:
        """Write last.json: what happened last, for `verify`, the watchdog and people."""
        entry = {"time": iso(now), "action": action, "detail": detail,
                 "sha256": ruleset_sha256}
        self.ensure()
        write_json(self.path / LAST, entry, 0o640, pretty=True)
