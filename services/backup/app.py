"""mushishi-backup's orchestration: `run` (backup, retention, restore verification) and
`check`, step by step.

Facts come in through `Deps` (clock, hostname, randomness, file checks, credentials); the
repository is reached through `repository` (every process through `process.Processes`);
every decision is in `core`. Each run leaves a result in <state_dir>/last.json (check:
check.json) and a line in history.jsonl (`state`), and a node_exporter textfile
(`metrics`), whatever happened.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from mushishi.services.backup import core, metrics, state
from mushishi.services.backup.core import Fatal, RetentionResult, SetResult, VerifyResult
from mushishi.services.backup.repository import (
    access,
    backup_set,
    clear_stale_locks,
    open_repository,
    retention,
    share_with_group,
)
from mushishi.services.backup.restic import first_error_line, local_repository_path
from mushishi.services.backup.verify import verify_snapshots
from mushishi.shared.config import MushishiSettings
from mushishi.shared.formatting import human_bytes
from mushishi.shared.metrics import write_textfile_or_warn
from mushishi.shared.notify import Notifier
from mushishi.shared.processes import pid_alive

log = logging.getLogger("mushishi.backup")


def utc_now() -> datetime:
    """The current time, timezone-aware."""
    return datetime.now(UTC)


@dataclass
class Deps:
    """Everything the runner learns from the world, injectable in tests."""

    now: Callable[[], datetime] = utc_now
    hostname: str = field(default_factory=socket.gethostname)
    pid_alive: Callable[[int], bool] = pid_alive
    rng: random.Random = field(default_factory=random.SystemRandom)
    path_exists: Callable[[str], bool] = os.path.lexists
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    dotenv: Mapping[str, str | None] = field(default_factory=dict)
    notifier: Notifier = field(default_factory=Notifier)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    signal_number: int | None = None
    monotonic: Callable[[], float] = time.monotonic
    grace_s: float = 120.0


def _publish(state_dir: Path, result_file: str, textfile: str, textfile_dir: str,
             record: dict[str, Any],
             registry_of: Callable[[dict[str, Any]], CollectorRegistry]) -> None:
    """Metrics textfile, then the result file and a history line (always written)."""
    warning = write_textfile_or_warn(registry_of(record), textfile_dir, textfile,
                                     "backup.textfile_dir")
    if warning is not None:
        log.warning("%s", warning)
        record.setdefault("warnings", []).append(warning)
    state.record_result(state_dir, result_file, record)


async def run_backup(settings: MushishiSettings, deps: Deps) -> int:
    """`mushishi-backup run`: back up every set, apply retention, verify a restore sample."""
    config = settings.backup
    state_dir = Path(config.state_dir)
    started = deps.now()
    previous = state.previous_result(state_dir, state.RUN_RESULT)
    warnings: list[str] = []
    errors: list[str] = []
    results: dict[str, SetResult] = {}
    stale: list[str] = []
    kept = RetentionResult()
    verified = VerifyResult()
    fatal: str | None = None
    try:
        async with state.run_lock(state_dir, config.lock_wait_s, deps.stopping):
            repo = access(config, environ=deps.environ, dotenv=deps.dotenv,
                          stopping=deps.stopping, grace_s=deps.grace_s,
                          monotonic=deps.monotonic)
            deps.notifier.status(f"opening repository {config.repository}")
            created = await open_repository(config, repo, create=True)
            path = local_repository_path(config.repository)
            try:
                if path and share_with_group(Path(path), os.getegid()):
                    log.info("made %s readable by group %d for the watchdog", path,
                             os.getegid())
            except OSError as error:
                warnings.append(f"cannot make {path} readable by the watchdog's group: "
                                f"{error}; its snapshot-age check will fail")
            if created:
                log.info("created restic repository %s", config.repository)
            stale = await clear_stale_locks(repo, now=deps.now, hostname=deps.hostname,
                                            pid_alive=deps.pid_alive)
            warnings += [f"cleared stale {line}: a previous run was killed" for line in stale]
            if not config.sets:
                raise Fatal("no [[backup.sets]] declared: nothing is backed up")
            present, missing = core.plan_sets(config.sets, deps.path_exists)
            for item in missing:
                results[item.path] = item
                warnings.append(item.error or f"{item.path} is missing")
                log.warning("%s", item.error)
            for item in present:
                outcome = await backup_set(config, repo, item, status=deps.notifier.status,
                                           monotonic=deps.monotonic)
                results[item.path] = outcome
                if outcome.error:
                    (errors if outcome.status == "failed" else warnings).append(
                        f"{item.path}: {outcome.error}")
                log.info("backup of %s: %s (snapshot %s, %d new files, %s added)", item.path,
                         outcome.status, outcome.snapshot_id, outcome.files_new,
                         human_bytes(outcome.bytes_added))
                if deps.stopping.is_set():
                    break
            ordered = [results[s.path] for s in config.sets if s.path in results]
            skip = core.should_run_retention(ordered, fatal=None,
                                             interrupted=deps.stopping.is_set())
            if skip is None:
                deps.notifier.status("applying retention (forget --prune)")
                kept = await retention(config, repo)
                if kept.error:
                    warnings.append(kept.error)
            else:
                kept.skipped_reason = skip
            snapshots = [r.snapshot_id for r in ordered
                         if r.snapshot_id and r.status in ("ok", "partial")]
            if snapshots and not deps.stopping.is_set():
                deps.notifier.status(f"verifying a restore of {config.verify_sample_files} "
                                     f"sample files")
                verified = await verify_snapshots(
                    repo.processes, repo.restic, snapshots,
                    sample_files=config.verify_sample_files,
                    max_bytes=config.verify_max_bytes, rng=deps.rng)
    except Fatal as error:
        fatal = str(error)
        errors.append(fatal)
        log.error("%s", fatal)
    interrupted = deps.stopping.is_set()
    ordered = [results[s.path] for s in config.sets if s.path in results]
    if interrupted:
        for item in config.sets:
            if item.path not in results:
                ordered.append(SetResult(item.path, item.reason, "not-run"))
        errors.append("interrupted by a stop request; restic released its lock, and the "
                      "repository is consistent (unfinished data is pruned later)")
    outcome = core.overall_outcome(ordered, fatal=fatal, interrupted=interrupted,
                                   warnings=warnings)
    status = core.exit_code(outcome, verified, signal_number=deps.signal_number)
    record = core.result_record(
        started=started, finished=deps.now(), outcome=outcome, repository=config.repository,
        sets=ordered, warnings=warnings, errors=errors, retention=kept, verify=verified,
        stale_locks_cleared=stale, previous=previous, exit_status=status)
    _publish(state_dir, state.RUN_RESULT, metrics.RUN_TEXTFILE, config.textfile_dir, record,
             metrics.backup_metrics)
    summary = (f"backup {outcome.value}: {len(record['snapshot_ids'])} snapshot(s), "
               f"{human_bytes(record['bytes_added'])} added, verify {verified.outcome}")
    (log.info if status == 0 else log.error)("%s", summary)
    deps.notifier.status(summary)
    return status


async def run_check(settings: MushishiSettings, deps: Deps) -> int:
    """`mushishi-backup check`: restic check, reading back a subset of the data."""
    config = settings.backup
    state_dir = Path(config.state_dir)
    started = deps.now()
    previous = state.previous_result(state_dir, state.CHECK_RESULT)
    error: str | None = None
    stale: list[str] = []
    try:
        async with state.run_lock(state_dir, config.lock_wait_s, deps.stopping):
            repo = access(config, environ=deps.environ, dotenv=deps.dotenv,
                          stopping=deps.stopping, grace_s=deps.grace_s,
                          monotonic=deps.monotonic)
            await open_repository(config, repo, create=False)
            stale = await clear_stale_locks(repo, now=deps.now, hostname=deps.hostname,
                                            pid_alive=deps.pid_alive)
            deps.notifier.status(f"restic check --read-data-subset={config.check_read_data_subset}")
            result = await repo.processes.run(repo.restic.check(config.check_read_data_subset))
            if result.returncode != 0:
                error = (f"restic check exited {result.returncode}: "
                         f"{first_error_line(result.stderr or result.stdout)}")
    except Fatal as failure:
        error = str(failure)
    if deps.stopping.is_set() and error is None:
        error = "interrupted by a stop request"
    record = core.check_record(started=started, finished=deps.now(), ok=error is None,
                               read_data_subset=config.check_read_data_subset, error=error,
                               stale_locks_cleared=stale, previous=previous)
    _publish(state_dir, state.CHECK_RESULT, metrics.CHECK_TEXTFILE, config.textfile_dir,
             record, metrics.check_metrics)
    if error:
        log.error("restic check failed: %s", error)
        deps.notifier.status(f"check failed: {error}")
        return 1
    log.info("restic check passed (read %s of the data)", config.check_read_data_subset)
    deps.notifier.status("check ok")
    return 0
