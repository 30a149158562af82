"""Decisions of mushishi-backup over plain data: sets, outcomes, exit codes, the result record.

No I/O here: the runner (`app`) gathers facts and calls these functions.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from mushishi.services.backup.restic import ExitClass, FileNode
from mushishi.shared.config.backup import BackupSet


class Fatal(Exception):
    """The run cannot go on; the message names what to fix."""


class Outcome(StrEnum):
    """The outcome of one `mushishi-backup run`."""

    OK = "ok"                    # every declared set is in a new, complete snapshot
    WARNING = "warning"          # snapshots written, but something needs a look (see warnings)
    PARTIAL = "partial"          # restic exit 3: a snapshot lacks files it could not read
    COPY_FAILED = "copy-failed"  # the box's own backup is fine; an off-box copy failed
    FAILED = "failed"            # a present set has no new snapshot, or nothing could run
    INTERRUPTED = "interrupted"  # stopped (SIGTERM/SIGINT); the repository stays consistent


# Set statuses: ok, partial, failed, missing, interrupted, not-run.
_SET_STATUS = {
    ExitClass.OK: "ok",
    ExitClass.PARTIAL: "partial",
    ExitClass.INTERRUPTED: "interrupted",
}


def set_status(exit_class: ExitClass) -> str:
    """A backup set's status from restic's exit class."""
    return _SET_STATUS.get(exit_class, "failed")


@dataclass
class SetResult:
    """One declared backup set in one run."""

    path: str
    reason: str
    status: str
    snapshot_id: str | None = None
    files_new: int = 0
    files_changed: int = 0
    bytes_added: int = 0
    unreadable: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class RetentionResult:
    """`restic forget --prune` in one run."""

    ran: bool = False
    kept: int = 0
    removed: int = 0
    error: str | None = None
    skipped_reason: str | None = None


@dataclass
class VerifyResult:
    """Restore verification of a random sample of files from the new snapshots."""

    outcome: str = "skipped"   # ok | failed | inconclusive | skipped
    files_checked: int = 0
    files_matched: int = 0
    files_changed_since_backup: int = 0
    bytes_restored: int = 0
    mismatches: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class CopyResult:
    """One off-box copy (`[[backup.copies]]`) in one run."""

    repository: str                 # as shown (display_repository)
    outcome: str = "skipped"        # ok | warning | failed | skipped | interrupted
    snapshot_ids: list[str] = field(default_factory=list)  # this run's, in the copy
    copied_from: list[str] = field(default_factory=list)   # primary snapshots copied now
    newest_snapshot_time: str | None = None  # in the copy, as read in this run
    retention: RetentionResult = field(default_factory=RetentionResult)
    verify: VerifyResult = field(default_factory=VerifyResult)
    stale_locks_cleared: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    skipped_reason: str | None = None


def copy_outcome(result: CopyResult, *, interrupted: bool) -> str:
    """A copy's outcome: failed when it could not copy, lacks this run's snapshots, or its
    restore sample did not match; warning when it needs a look; never hidden in the run's."""
    if interrupted:
        return "interrupted"
    if result.error or result.verify.outcome == "failed":
        return "failed"
    if result.warnings or result.retention.error or result.verify.outcome == "inconclusive":
        return "warning"
    return "ok"


def missing_from_copy(snapshot_ids: Sequence[str], originals: Iterable[str | None]
                      ) -> list[str]:
    """This run's snapshots (short ids) that no snapshot of the copy came from."""
    sources = [original for original in originals if original]
    return [sid for sid in snapshot_ids if not any(o.startswith(sid) for o in sources)]


def copy_record(result: CopyResult, *, finished: datetime, previous: Mapping[str, Any] | None
                ) -> dict[str, Any]:
    """One entry of last.json's `copies`: what happened, plus what is still known from
    earlier runs (the newest snapshot, the last success and verification) when this one
    could not tell."""
    previous = previous or {}
    newest = result.newest_snapshot_time or previous.get("newest_snapshot_time")
    succeeded = result.outcome in ("ok", "warning")
    verified = result.verify.outcome == "ok"
    age = None
    if newest:
        age = round((finished - datetime.fromisoformat(newest)).total_seconds(), 3)
    return {
        "repository": result.repository,
        "outcome": result.outcome,
        "snapshot_age_s": age,
        "verified": verified,
        "newest_snapshot_time": newest,
        "last_success_time": finished.isoformat() if succeeded
        else previous.get("last_success_time"),
        "last_verified_time": finished.isoformat() if verified
        else previous.get("last_verified_time"),
        "snapshot_ids": list(result.snapshot_ids),
        "snapshots_copied": len(result.copied_from),
        "copied_from": list(result.copied_from),
        "retention": asdict(result.retention),
        "verify": asdict(result.verify),
        "stale_locks_cleared": list(result.stale_locks_cleared),
        "warnings": list(result.warnings),
        "error": result.error,
        "skipped_reason": result.skipped_reason,
    }


def plan_sets(sets: Sequence[BackupSet], exists: Callable[[str], bool]
              ) -> tuple[list[BackupSet], list[SetResult]]:
    """Split declared sets into present ones and missing ones (a warning, never a skip)."""
    present: list[BackupSet] = []
    missing: list[SetResult] = []
    for backup_set in sets:
        if exists(backup_set.path):
            present.append(backup_set)
        else:
            missing.append(SetResult(
                backup_set.path, backup_set.reason, "missing",
                error=f"{backup_set.path} does not exist: it was declared in [[backup.sets]] "
                      f"because: {backup_set.reason}"))
    return present, missing


def overall_outcome(sets: Sequence[SetResult], *, fatal: str | None, interrupted: bool,
                    warnings: Sequence[str], copies: Sequence[str] = ()) -> Outcome:
    """The run's outcome: the worst of its parts (a partial backup is never success, and a
    failed copy is never hidden behind the box's own success)."""
    if interrupted:
        return Outcome.INTERRUPTED
    statuses = {s.status for s in sets}
    if fatal or "failed" in statuses or not statuses & {"ok", "partial"}:
        return Outcome.FAILED
    if "partial" in statuses:
        return Outcome.PARTIAL
    if "failed" in copies:
        return Outcome.COPY_FAILED
    if warnings or "missing" in statuses:
        return Outcome.WARNING
    return Outcome.OK


def should_run_retention(sets: Sequence[SetResult], *, fatal: str | None,
                         interrupted: bool) -> str | None:
    """None when retention may run; otherwise why not (history is kept while now is broken)."""
    if interrupted:
        return "the run was interrupted"
    if fatal:
        return "the run failed before any backup"
    if not any(s.status in ("ok", "partial") for s in sets):
        return "no snapshot was written in this run"
    return None


def exit_code(outcome: Outcome, verify: VerifyResult, *, signal_number: int | None) -> int:
    """The process exit status: 0 only when nothing needs immediate attention."""
    if outcome is Outcome.INTERRUPTED:
        return 128 + (signal_number or 15)
    if outcome is Outcome.PARTIAL:
        return 3
    if outcome is Outcome.FAILED:
        return 1
    if verify.outcome in ("failed", "inconclusive"):
        return 2
    if outcome is Outcome.COPY_FAILED:
        return 4
    return 0


class Reservoir:
    """A uniform random sample of at most `count` files, of at most `max_bytes` in total.

    Reservoir sampling (a random key per file, keep the smallest `count`): one pass, memory
    bounded by `count` whatever the size of the snapshot. Files larger than `max_bytes`
    never qualify; at the end the largest are dropped until the sample fits the budget.
    """

    def __init__(self, count: int, max_bytes: int, rng: random.Random) -> None:
        self.count = count
        self.max_bytes = max_bytes
        self.rng = rng
        self._heap: list[tuple[float, int, FileNode]] = []  # (-key, arrival, node)
        self._seen = 0

    def offer(self, node: FileNode) -> None:
        """Consider one file."""
        self._seen += 1
        if self.count <= 0 or node.size > self.max_bytes:
            return
        key = self.rng.random()
        if len(self._heap) < self.count:
            heapq.heappush(self._heap, (-key, self._seen, node))
        elif key < -self._heap[0][0]:
            heapq.heapreplace(self._heap, (-key, self._seen, node))

    def sample(self) -> list[FileNode]:
        """The chosen files, sorted by path."""
        chosen = sorted((item[2] for item in self._heap), key=lambda n: n.size)
        while chosen and sum(n.size for n in chosen) > self.max_bytes:
            chosen.pop()
        return sorted(chosen, key=lambda n: n.path)


def choose_sample(nodes: Iterable[FileNode], count: int, max_bytes: int,
                  rng: random.Random) -> list[FileNode]:
    """Reservoir-sample `nodes` (see Reservoir)."""
    reservoir = Reservoir(count, max_bytes, rng)
    for node in nodes:
        reservoir.offer(node)
    return reservoir.sample()


def split_sample(total: int, parts: int) -> list[int]:
    """`total` files spread over `parts` snapshots as evenly as possible."""
    if parts <= 0:
        return []
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def verify_outcome(result: VerifyResult, *, restore_failed: bool) -> str:
    """ok needs at least one byte-identical file and no mismatch."""
    if restore_failed or result.mismatches:
        return "failed"
    if result.files_matched == 0:
        return "inconclusive" if result.files_checked else "skipped"
    return "ok"


def result_record(
    *, started: datetime, finished: datetime, outcome: Outcome, repository: str,
    sets: Sequence[SetResult], warnings: Sequence[str], errors: Sequence[str],
    retention: RetentionResult, verify: VerifyResult, stale_locks_cleared: Sequence[str],
    previous: dict[str, Any] | None, exit_status: int,
    copies: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The JSON written to <state_dir>/last.json (and appended to history.jsonl)."""
    # The box's own backup succeeded also when only a copy failed (the copy has its own).
    succeeded = outcome in (Outcome.OK, Outcome.WARNING, Outcome.COPY_FAILED)
    last_success = finished.isoformat() if succeeded else (previous or {}).get(
        "last_success_time")
    return {
        "kind": "backup",
        "time": started.isoformat(),
        "finished": finished.isoformat(),
        "duration_s": round((finished - started).total_seconds(), 3),
        "outcome": outcome.value,
        "exit_status": exit_status,
        "repository": repository,
        "snapshot_ids": [s.snapshot_id for s in sets if s.snapshot_id],
        "files_new": sum(s.files_new for s in sets),
        "files_changed": sum(s.files_changed for s in sets),
        "bytes_added": sum(s.bytes_added for s in sets),
        "sets": [asdict(s) for s in sets],
        "warnings": list(warnings),
        "errors": list(errors),
        "stale_locks_cleared": list(stale_locks_cleared),
        "retention": asdict(retention),
        "verify": asdict(verify),
        "last_success_time": last_success,
        "copies": list(copies),
    }


def check_record(*, started: datetime, finished: datetime, ok: bool, read_data_subset: str,
                 error: str | None, stale_locks_cleared: Sequence[str],
                 previous: dict[str, Any] | None,
                 copies: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """The JSON written to <state_dir>/check.json by `mushishi-backup check` (`outcome` is
    the primary's; each copy has its own in `copies`)."""
    last_success = finished.isoformat() if ok else (previous or {}).get("last_success_time")
    return {
        "kind": "check",
        "time": started.isoformat(),
        "finished": finished.isoformat(),
        "duration_s": round((finished - started).total_seconds(), 3),
        "outcome": "ok" if ok else "failed",
        "read_data_subset": read_data_subset,
        "error": error,
        "stale_locks_cleared": list(stale_locks_cleared),
        "last_success_time": last_success,
        "copies": list(copies),
    }
