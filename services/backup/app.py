"""mushishi-backup's orchestration: `run` (backup, then the off-box copies side by side with
the primary's retention and restore verification) and `check`, step by step.

Facts come in through `Deps` (clock, hostname, randomness, file checks, credentials, the
resolver); the repository is reached through `repository` (every process through
`process.Processes`), each copy through `copies`; every decision is in `core`. Each run
leaves a result in <state_dir>/last.json (check: check.json) and a line in history.jsonl
(`state`), and a node_exporter textfile (`metrics`), whatever happened.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from mushishi.services.backup import core, metrics, state
from mushishi.services.backup.copies import (
    CopyContext,
    Reached,
    copy_one,
    open_early,
    reach,
    skipped_but_opened,
)
from mushishi.services.backup.core import (
    CopyResult,
    Fatal,
    RetentionResult,
    SetResult,
    VerifyResult,
)
from mushishi.services.backup.network import check_host, parse_pins
from mushishi.services.backup.process import Processes
from mushishi.services.backup.repository import (
    Access,
    access,
    backup_set,
    clear_stale_locks,
    open_repository,
    retention,
    share_with_group,
)
from mushishi.services.backup.restic import first_error_line, local_repository_path
from mushishi.services.backup.verify import Sample, restore_sample, sample_snapshots
from mushishi.shared.config import MushishiSettings
from mushishi.shared.config.backup import (
    PINNED_HOSTS_ENV,
    BackupSettings,
    copy_key,
    display_repository,
    repository_host,
)
from mushishi.shared.formatting import human_bytes
from mushishi.shared.locality import Resolver, system_resolver
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
    resolve: Resolver = system_resolver


def pinned_hosts(environ: Mapping[str, str]) -> dict[str, frozenset[str]] | None:
    """The addresses `mushishi install` pinned in the unit, None outside it."""
    text = environ.get(PINNED_HOSTS_ENV)
    if text is None:
        return None
    try:
        return parse_pins(text)
    except ValueError as error:
        raise Fatal(f"{PINNED_HOSTS_ENV} in the unit is malformed ({error}): run "
                    f"`mushishi install` again") from None


def check_primary_host(config: BackupSettings, deps: Deps) -> None:
    """A remote primary repository still resolves to the addresses the unit may reach."""
    host = repository_host(config.repository)
    if host is not None:
        refused = check_host("backup.repository", host, pinned_hosts(deps.environ),
                             deps.resolve)
        if refused:
            raise Fatal(refused)


def _copy_context(deps: Deps) -> CopyContext:
    return CopyContext(
        environ=deps.environ, dotenv=deps.dotenv, pins=pinned_hosts(deps.environ),
        resolve=deps.resolve, status=deps.notifier.status, rng=deps.rng, now=deps.now,
        hostname=deps.hostname, pid_alive=deps.pid_alive, stopping=deps.stopping,
        grace_s=deps.grace_s, monotonic=deps.monotonic)


def _copy_problems(index: int, result: CopyResult) -> tuple[list[str], list[str]]:
    """(errors, warnings) of one copy, each naming the copy's key, for the run's lists."""
    key = copy_key(index)

    def named(text: str) -> str:
        return text if text.startswith(key) else f"{key}: {text}"

    errors = [named(result.error)] if result.error else []
    if result.verify.outcome == "failed":
        detail = "; ".join(([result.verify.error] if result.verify.error else [])
                           + result.verify.mismatches[:3])
        errors.append(named(f"restore verification from {result.repository} failed: "
                            f"{detail}"))
    return errors, [named(w) for w in result.warnings]


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
    """`mushishi-backup run`: back up every set, copy to each off-box repository (its own
    retention and restore sample), then apply retention and verify a restore sample."""
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
    copies = [CopyResult(display_repository(c.repository)) for c in config.copies]
    fatal: str | None = None
    try:
        async with state.run_lock(state_dir, config.lock_wait_s, deps.stopping):
            check_primary_host(config, deps)
            repo = access(config, environ=deps.environ, dotenv=deps.dotenv,
                          stopping=deps.stopping, grace_s=deps.grace_s,
                          monotonic=deps.monotonic)
            deps.notifier.status(f"opening repository {display_repository(config.repository)}")
            # Not probed when local and holding no lock (nothing to clear): one restic start
            # less; a backup that fails then has the probe explain why (`_backup_and_copy`).
            opened = await open_repository(config, repo, create=True, unless_unlocked=True)
            path = local_repository_path(config.repository)
            try:
                if path and share_with_group(Path(path), os.getegid()):
                    log.info("made %s readable by group %d for the watchdog", path,
                             os.getegid())
            except OSError as error:
                warnings.append(f"cannot make {path} readable by the watchdog's group: "
                                f"{error}; its snapshot-age check will fail")
            if opened.created:
                log.info("created restic repository %s", config.repository)
            stale = await clear_stale_locks(repo, opened, now=deps.now,
                                            hostname=deps.hostname, pid_alive=deps.pid_alive)
            warnings += [f"cleared stale {line}: a previous run was killed" for line in stale]
            if not config.sets:
                raise Fatal("no [[backup.sets]] declared: nothing is backed up")
            # Each copy is opened (a restic start, its key derivation) while the sets are
            # backed up, not after. Never left running, nor cancelled by whatever awaits it
            # (a restic init cut short leaves a repository no later run can open): only a
            # stop request ends it early, as it ends every restic.
            opening = _open_copies_early(config, deps)
            try:
                kept, verified = await _backup_and_copy(config, deps, repo, results, warnings,
                                                        errors, copies, opening,
                                                        probed=opened.probed)
            finally:
                if opening:
                    await asyncio.shield(asyncio.gather(*opening, return_exceptions=True))
            if kept.error:
                warnings.append(kept.error)
    except Fatal as error:
        fatal = str(error)
        errors.append(fatal)
        log.error("%s", fatal)
    interrupted = deps.stopping.is_set()
    for index, result in enumerate(copies):
        if result.outcome == "skipped" and result.skipped_reason is None:
            result.skipped_reason = ("the run was interrupted" if interrupted
                                     else "the run failed before any backup")
        copy_errors, copy_warnings = _copy_problems(index, result)
        errors += copy_errors
        warnings += copy_warnings
    ordered = [results[s.path] for s in config.sets if s.path in results]
    if interrupted:
        for item in config.sets:
            if item.path not in results:
                ordered.append(SetResult(item.path, item.reason, "not-run"))
        errors.append("interrupted by a stop request; restic released its lock, and the "
                      "repository is consistent (unfinished data is pruned later)")
    outcome = core.overall_outcome(ordered, fatal=fatal, interrupted=interrupted,
                                   warnings=warnings, copies=[c.outcome for c in copies])
    status = core.exit_code(outcome, verified, signal_number=deps.signal_number)
    finished = deps.now()
    earlier = {c.get("repository"): c for c in (previous or {}).get("copies") or []
               if isinstance(c, dict)}
    record = core.result_record(
        started=started, finished=finished, outcome=outcome, repository=display_repository(
            config.repository), sets=ordered, warnings=warnings, errors=errors,
        retention=kept, verify=verified, stale_locks_cleared=stale, previous=previous,
        exit_status=status, copies=[core.copy_record(c, finished=finished,
                                                     previous=earlier.get(c.repository))
                                    for c in copies])
    _publish(state_dir, state.RUN_RESULT, metrics.RUN_TEXTFILE, config.textfile_dir, record,
             metrics.backup_metrics)
    summary = (f"backup {outcome.value}: {len(record['snapshot_ids'])} snapshot(s), "
               f"{human_bytes(record['bytes_added'])} added, verify {verified.outcome}")
    if copies:
        summary += "; copies: " + ", ".join(f"{c.repository} {c.outcome}" for c in copies)
    (log.info if status == 0 else log.error)("%s", summary)
    deps.notifier.status(summary)
    return status


def _open_copies_early(config: BackupSettings, deps: Deps
                       ) -> list[asyncio.Task[Reached | str]]:
    """A task opening each copy (`copies.open_early`), started before the sets' backups;
    none when there is no copy, or when the unit's pinned hosts are malformed (the copies'
    own start then fails the run with the line saying so)."""
    if not config.copies:
        return []
    try:
        context = _copy_context(deps)
    except Fatal:
        return []
    return [asyncio.create_task(open_early(config, index, context))
            for index in range(len(config.copies))]


async def _backup_and_copy(config: BackupSettings, deps: Deps, repo: Access,
                           results: dict[str, SetResult], warnings: list[str],
                           errors: list[str], copies: list[CopyResult],
                           opening: list[asyncio.Task[Reached | str]], *, probed: bool
                           ) -> tuple[RetentionResult, VerifyResult]:
    """Back up every set (filling `results`), then the copies and the primary's checks.
    Unless the repository was `probed` when opened, the first backup that fails has it
    opened now, so that a wrong password or a repository gone fails the run with the line
    the probe gives."""
    present, missing = core.plan_sets(config.sets, deps.path_exists)
    for item in missing:
        results[item.path] = item
        warnings.append(item.error or f"{item.path} is missing")
        log.warning("%s", item.error)
    for item in present:
        outcome = await backup_set(config, repo, item, status=deps.notifier.status,
                                   monotonic=deps.monotonic)
        results[item.path] = outcome
        if outcome.status == "failed" and not probed and not deps.stopping.is_set():
            probed = True
            await open_repository(config, repo, create=False)  # raises Fatal saying why
        if outcome.error:
            (errors if outcome.status == "failed" else warnings).append(
                f"{item.path}: {outcome.error}")
        log.info("backup of %s: %s (snapshot %s, %d new files, %s added)", item.path,
                 outcome.status, outcome.snapshot_id, outcome.files_new,
                 human_bytes(outcome.bytes_added))
        if deps.stopping.is_set():
            break
    ordered = [results[s.path] for s in config.sets if s.path in results]
    skip = core.should_run_retention(ordered, fatal=None, interrupted=deps.stopping.is_set())
    snapshots = [r.snapshot_id for r in ordered
                 if r.snapshot_id and r.status in ("ok", "partial")]
    return await _copies_and_checks(config, deps, repo, snapshots, skip, copies, opening)


async def _copies_and_checks(config: BackupSettings, deps: Deps, repo: Access,
                             snapshots: list[str], skip: str | None,
                             copies: list[CopyResult],
                             opening: list[asyncio.Task[Reached | str]]
                             ) -> tuple[RetentionResult, VerifyResult]:
    """The copies, and the primary's retention and restore sample, side by side (each
    restic start pays its own key derivation; run one after another they were most of a
    run's time). The primary's sample is picked (`restic ls`) while the copies read the
    primary; its `forget --prune` (an exclusive lock) waits until every copy has read what
    it copies from the primary (a copy that failed before still receives what the box's own
    retention is about to forget); the sample is restored after the prune."""
    reading = [asyncio.Event() for _ in copies]  # set: copy i no longer reads the primary
    # Read before any task starts: a malformed pin list is the run's Fatal, not a task's.
    context = _copy_context(deps) if copies and snapshots and skip is None else None
    kept = RetentionResult()
    verified = VerifyResult()

    picking: asyncio.Task[list[Sample]] | None = None
    if snapshots and not deps.stopping.is_set():
        # One `restic ls` of each snapshot picks the files the primary and every copy
        # restore (a copy holds the same trees). It only reads the primary: beside
        # `restic copy`, which reads too.
        picking = asyncio.create_task(sample_snapshots(
            repo.processes, repo.restic, snapshots, sample_files=config.verify_sample_files,
            max_bytes=config.verify_max_bytes, rng=deps.rng, repositories=1 + len(copies)))

    async def picked(index: int) -> Sample | None:
        """The sample for repository `index` (0: the primary, i + 1: copy i), if picked."""
        return None if picking is None else (await asyncio.shield(picking))[index]

    async def primary() -> None:
        nonlocal kept, verified
        sample = await picked(0)
        for event in reading:
            await event.wait()
        if skip is None and not deps.stopping.is_set():
            deps.notifier.status("applying retention (forget --prune)")
            kept, _ = await retention(config, repo, tags=config.tags)
        else:
            kept.skipped_reason = skip or "the run was interrupted"
        if sample is not None and not deps.stopping.is_set():
            # Restored after the prune: the sample's data survived it.
            deps.notifier.status(f"verifying a restore of {config.verify_sample_files} "
                                 f"sample files")
            verified = await restore_sample(repo.processes, repo.restic, sample)

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(_run_copies(config, deps, snapshots, skip, copies, reading,
                                          context, opening, picked))
            group.create_task(primary())
    finally:
        if picking is not None and not picking.done():
            picking.cancel()  # only when the run itself crashed
    return kept, verified


async def _run_copies(config: BackupSettings, deps: Deps, snapshots: list[str],
                      skip: str | None, copies: list[CopyResult],
                      reading: list[asyncio.Event], context: CopyContext | None,
                      opening: list[asyncio.Task[Reached | str]],
                      picked: Callable[[int], Awaitable[Sample | None]]) -> None:
    """Every copy at once (each to its own repository, opened by `opening[i]`, its sample
    `picked(i + 1)` from the primary's listing), when this run wrote snapshots; otherwise
    say why not, and what opening it found. `reading[i]` is set once copy i no longer reads
    the primary. A copy that fails, even by a bug here, is that copy's error: never the
    others'."""
    if context is None:
        for index, result in enumerate(copies):
            result.skipped_reason = skip or "no snapshot was written in this run"
            reading[index].set()
            if opening:
                await skipped_but_opened(result, opening[index],
                                          interrupted=deps.stopping.is_set())
        return

    async def one(index: int) -> None:
        try:
            if deps.stopping.is_set():
                copies[index].skipped_reason = "the run was interrupted"
                await skipped_but_opened(copies[index], opening[index], interrupted=True)
                return
            result = await copy_one(config, index, snapshots, context, reading[index].set,
                                    opening[index], functools.partial(picked, index + 1))
        except Exception as error:  # a bug: this copy failed, the others go on
            log.exception("copy to %s failed unexpectedly", copies[index].repository)
            result = CopyResult(copies[index].repository,
                                error=f"{copy_key(index)}: failed unexpectedly "
                                      f"({type(error).__name__}); see the journal")
        finally:
            reading[index].set()
        result.outcome = core.copy_outcome(result, interrupted=deps.stopping.is_set())
        copies[index] = result
        log.log(logging.INFO if result.outcome in ("ok", "warning") else logging.ERROR,
                "copy to %s: %s%s", result.repository, result.outcome,
                f" ({result.error})" if result.error else
                f" ({len(result.copied_from)} snapshot(s) copied, verify "
                f"{result.verify.outcome})")

    async with asyncio.TaskGroup() as group:
        for index in range(len(copies)):
            group.create_task(one(index))


async def run_check(settings: MushishiSettings, deps: Deps) -> int:
    """`mushishi-backup check`: restic check, reading back a subset of the data, of the
    primary repository and then of every copy."""
    config = settings.backup
    state_dir = Path(config.state_dir)
    started = deps.now()
    previous = state.previous_result(state_dir, state.CHECK_RESULT)
    error: str | None = None
    stale: list[str] = []
    copies: list[dict[str, Any]] = []
    try:
        async with state.run_lock(state_dir, config.lock_wait_s, deps.stopping):
            try:
                check_primary_host(config, deps)
                repo = access(config, environ=deps.environ, dotenv=deps.dotenv,
                              stopping=deps.stopping, grace_s=deps.grace_s,
                              monotonic=deps.monotonic)
                opened = await open_repository(config, repo, create=False)
                stale = await clear_stale_locks(repo, opened, now=deps.now,
                                                hostname=deps.hostname, pid_alive=deps.pid_alive)
                error = await _check(repo.processes, repo.restic.check(
                    config.check_read_data_subset), config, deps)
            except Fatal as failure:
                error = str(failure)
            for index in range(len(config.copies)):
                copies.append(await _check_copy(config, index, deps))
    except Fatal as failure:
        error = str(failure)
    if deps.stopping.is_set() and error is None:
        error = "interrupted by a stop request"
    record = core.check_record(started=started, finished=deps.now(), ok=error is None,
                               read_data_subset=config.check_read_data_subset, error=error,
                               stale_locks_cleared=stale, previous=previous, copies=copies)
    _publish(state_dir, state.CHECK_RESULT, metrics.CHECK_TEXTFILE, config.textfile_dir,
             record, metrics.check_metrics)
    failed_copies = [c for c in copies if c["outcome"] != "ok"]
    for item in failed_copies:
        log.error("restic check of %s failed: %s", item["repository"], item["error"])
    if error:
        log.error("restic check failed: %s", error)
        deps.notifier.status(f"check failed: {error}")
        return 1
    if failed_copies:
        deps.notifier.status(f"check ok; copy {failed_copies[0]['repository']} failed: "
                             f"{failed_copies[0]['error']}")
        return 1
    log.info("restic check passed (read %s of the data)%s", config.check_read_data_subset,
             f", and in {len(copies)} copies" if copies else "")
    deps.notifier.status("check ok" + (f", {len(copies)} copies ok" if copies else ""))
    return 0


async def _check(processes: Processes, argv: list[str], config: BackupSettings,
                 deps: Deps) -> str | None:
    deps.notifier.status(f"restic check --read-data-subset={config.check_read_data_subset}")
    result = await processes.run(argv)
    if result.returncode != 0:
        return (f"restic check exited {result.returncode}: "
                f"{first_error_line(result.stderr or result.stdout)}")
    return None


async def _check_copy(config: BackupSettings, index: int, deps: Deps) -> dict[str, Any]:
    """restic check of one copy: {repository, outcome, error, stale_locks_cleared}."""
    stale: list[str] = []
    try:
        repo, _, stale = await reach(config, index, _copy_context(deps), create=False)
        error = await _check(repo.processes, repo.restic.check(config.check_read_data_subset),
                             config, deps)
        if error:
            error += repo.ssh_said()
    except Fatal as failure:
        error = str(failure)
    return {"repository": display_repository(config.copies[index].repository),
            "outcome": "failed" if error else "ok", "error": error,
            "stale_locks_cleared": stale}
