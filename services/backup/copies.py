"""Off-box copies, step by step, for each `[[backup.copies]]` entry: while the primary's
backup runs, is its host still where `mushishi install` pinned it, open (or create) it,
clear stale locks (`open_early`); then, after a backup that wrote snapshots, `restic copy`
what it lacks, apply its own retention, read its snapshots back (the snapshots its
`forget --json` kept: the ids listed from the copy, their contents through restic's cache;
else `restic snapshots`), and restore-verify a sample of this run's snapshots from it (the
files picked from the primary's `restic ls` of the same snapshots, which the copy holds
tree for tree; the restore reads them from the copy itself).

A copy that fails is its own `CopyResult`; it never stops the other copies and never
touches the primary. Every decision is in `core`; every process runs through `process`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from mushishi.services.backup import core
from mushishi.services.backup.core import CopyResult, Fatal
from mushishi.services.backup.network import check_host
from mushishi.services.backup.repository import (
    Access,
    clear_stale_locks,
    copy_access,
    open_copy,
    retention,
)
from mushishi.services.backup.restic import (
    Restic,
    SnapshotInfo,
    first_error_line,
    parse_copy,
    parse_snapshots,
)
from mushishi.services.backup.verify import Sample, restore_sample, verify_snapshots
from mushishi.shared.config.backup import (
    BackupSettings,
    copy_key,
    display_repository,
    repository_host,
)
from mushishi.shared.locality import Resolver

log = logging.getLogger("mushishi.backup")


@dataclass
class CopyContext:
    """What every copy of one run needs from the runner."""

    environ: Mapping[str, str]
    dotenv: Mapping[str, str | None]
    pins: Mapping[str, frozenset[str]] | None   # None: not under the unit
    resolve: Resolver
    status: Callable[[str], None]
    rng: random.Random
    now: Callable[[], datetime]
    hostname: str
    pid_alive: Callable[[int], bool]
    stopping: asyncio.Event
    grace_s: float
    monotonic: Callable[[], float]


async def reach(settings: BackupSettings, index: int, context: CopyContext, *,
                create: bool) -> tuple[Access, Restic, list[str]]:
    """Copy `index` with its host where install pinned it, opened (created when `create`)
    and cleared of stale locks: (restic on it, the primary as its source, the stale locks
    cleared). Raise Fatal with one line naming the key."""
    copy = settings.copies[index]
    host = repository_host(copy.repository)
    if host is not None:
        refused = check_host(f"{copy_key(index)}.repository", host, context.pins,
                             context.resolve)
        if refused:
            raise Fatal(refused)
    repo, source = copy_access(settings, index, environ=context.environ,
                               dotenv=context.dotenv, stopping=context.stopping,
                               grace_s=context.grace_s, monotonic=context.monotonic)
    context.status(f"opening copy {display_repository(copy.repository)}")
    opened = await open_copy(settings, index, repo, source, create=create)
    stale = await clear_stale_locks(repo, opened, now=context.now, hostname=context.hostname,
                                    pid_alive=context.pid_alive)
    return repo, source, stale


Reached = tuple[Access, Restic, list[str]]


async def open_early(settings: BackupSettings, index: int, context: CopyContext
                     ) -> Reached | str:
    """`reach` copy `index` (creating it) while the primary's backup runs: what it returns,
    or one line saying why not (a bug here too is this copy's error, never the run's)."""
    try:
        return await reach(settings, index, context, create=True)
    except Fatal as error:
        return str(error)
    except Exception as error:
        log.exception("opening copy %s failed unexpectedly",
                      display_repository(settings.copies[index].repository))
        return (f"{copy_key(index)}: failed unexpectedly ({type(error).__name__}); see the "
                f"journal")


async def copy_one(settings: BackupSettings, index: int, snapshot_ids: Sequence[str],
                   context: CopyContext, done_reading: Callable[[], None],
                   opened: asyncio.Future[Reached | str],
                   pick: Callable[[], Awaitable[Sample | None]]) -> CopyResult:
    """Copy this run's snapshots (and any an earlier run missed) to copy `index`, once
    `opened` (`open_early`) has reached it; `done_reading` is called once `restic copy` no
    longer reads the primary. The files to verify are those `pick` returns, picked from the
    primary's listing of the same snapshots (no `restic ls` of the copy; its own when there
    is none)."""
    shown = display_repository(settings.copies[index].repository)
    result = CopyResult(shown)
    reached = await asyncio.shield(opened)  # never cancelled mid-init by this copy's end
    if isinstance(reached, str):
        result.error = reached
        return result
    repo, source, stale = reached
    _cleared(result, stale)
    context.status(f"copying to {shown}")
    try:
        copied = await repo.processes.run(repo.restic.copy_from(source, tags=settings.tags))
    finally:
        done_reading()
    result.copied_from = parse_copy(copied.stdout)
    if copied.returncode != 0:
        result.error = (f"restic copy to {shown} exited {copied.returncode}: "
                        f"{first_error_line(copied.stderr)}{repo.ssh_said()}")
        return result
    context.status(f"applying retention in {shown}")
    result.retention, snapshots = await retention(settings.copies[index], repo,
                                                  tags=settings.tags)
    if result.retention.error:
        result.warnings.append(result.retention.error)
    if snapshots is None:
        # Retention failed or listed nothing (no keep policy): list the copy's snapshots.
        snapshots, failure = await _list_snapshots(repo, settings.tags, shown)
        if snapshots is None:
            result.error = failure
            return result
    if snapshots:
        result.newest_snapshot_time = max(s.time for s in snapshots).isoformat()
    behind = core.missing_from_copy(snapshot_ids, (s.original for s in snapshots))
    if behind:
        result.error = (f"{shown} lacks this run's snapshot(s) {', '.join(behind)} after "
                        f"restic copy succeeded")
        return result
    copied = {sid: s.short_id for s in snapshots for sid in snapshot_ids
              if s.original and s.original.startswith(sid)}
    result.snapshot_ids = list(copied.values())
    context.status(f"verifying a restore of {settings.verify_sample_files} sample files "
                   f"from {shown}")
    sample = await pick()
    if sample is None or sample.error is not None:
        # No files picked from the primary's listing (a stop, or the listing failed): the
        # copy lists its own snapshots.
        result.verify = await verify_snapshots(
            repo.processes, repo.restic, result.snapshot_ids,
            sample_files=settings.verify_sample_files, max_bytes=settings.verify_max_bytes,
            rng=context.rng)
    else:
        result.verify = await restore_sample(repo.processes, repo.restic,
                                             sample.in_copy(copied))
    return result


async def skipped_but_opened(result: CopyResult, opened: asyncio.Future[Reached | str], *,
                             interrupted: bool) -> None:
    """A copy that copies nothing in this run (no snapshot, or a stop) was still opened
    beside the backup: its stale locks cleared are recorded, and a copy that could not be
    opened fails (unless the stop is why), so a broken copy shows on every run."""
    reached = await asyncio.shield(opened)
    if isinstance(reached, str):
        if interrupted:
            log.warning("%s", reached)
        else:
            result.error = reached
            result.outcome = "failed"
        return
    _, _, stale = reached
    _cleared(result, stale)


def _cleared(result: CopyResult, stale: list[str]) -> None:
    """Record the stale locks that opening the copy cleared, each a warning."""
    result.stale_locks_cleared = stale
    result.warnings += [f"cleared stale {line}: a previous copy was killed" for line in stale]


async def _list_snapshots(repo: Access, tags: Sequence[str], shown: str
                          ) -> tuple[list[SnapshotInfo] | None, str]:
    """`restic snapshots` of the copy: its snapshots, or None and one line saying why."""
    listed = await repo.processes.run(repo.restic.snapshots(tags=tags))
    try:
        if listed.returncode == 0:
            return parse_snapshots(listed.stdout), ""
    except (ValueError, KeyError, TypeError):
        pass
    return None, (f"restic snapshots on {shown} exited {listed.returncode}: "
                  f"{first_error_line(listed.stderr)}{repo.ssh_said()}")
