"""mushishi-backup wiring: `run` (backup, retention, restore verification) and `check`.

Facts come in through `Deps` (clock, hostname, randomness, file checks, credentials), every
process goes through `process.Processes`, every decision is in `core`. Each run leaves a
result in <state_dir>/last.json (check: check.json), a line in history.jsonl and a
node_exporter textfile, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import random
import socket
import stat
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import Gauge

from mushishi.services.backup import core
from mushishi.services.backup.core import Outcome, RetentionResult, SetResult, VerifyResult
from mushishi.services.backup.process import Processes
from mushishi.services.backup.restic import (
    ExitClass,
    Restic,
    classify,
    first_error_line,
    is_stale,
    local_repository_path,
    parse_backup,
    parse_forget,
    parse_lock,
    parse_progress,
)
from mushishi.services.backup.verify import verify_snapshots
from mushishi.shared.config import MushishiSettings
from mushishi.shared.config.backup import BackupSet, BackupSettings
from mushishi.shared.credentials import find_credential
from mushishi.shared.files import replace_atomically
from mushishi.shared.metrics import new_registry, write_textfile
from mushishi.shared.notify import Notifier
from mushishi.shared.processes import pid_alive

log = logging.getLogger("mushishi.backup")

HISTORY_LINES = 500
PROGRESS_EVERY_S = 5.0


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


class Fatal(Exception):
    """The run cannot go on; the message names what to fix."""


# -- files ---------------------------------------------------------------------------------

def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from a file, or None when it is absent or unreadable."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON so a reader sees the old or the new file, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(path, json.dumps(data, indent=2, sort_keys=True) + "\n", 0o640)


def append_history(path: Path, record: dict[str, Any], keep: int = HISTORY_LINES) -> None:
    """Append one line to history.jsonl, keeping the newest `keep` lines."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = []
    lines.append(json.dumps(record, sort_keys=True))
    replace_atomically(path, "\n".join(lines[-keep:]) + "\n", 0o640)


def _open_lock_file(path: Path) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("a")


@contextlib.asynccontextmanager
async def run_lock(state_dir: Path, wait_s: float, stopping: asyncio.Event
                   ) -> AsyncIterator[None]:
    """One `mushishi-backup` (run or check) at a time on this machine."""
    handle = _open_lock_file(state_dir / "run.lock")
    try:
        deadline = asyncio.get_running_loop().time() + wait_s
        announced = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not announced:
                    log.info("another mushishi-backup is running; waiting up to %.0fs", wait_s)
                    announced = True
                if stopping.is_set():
                    raise Fatal("stopped while waiting for the other mushishi-backup") from None
                if asyncio.get_running_loop().time() >= deadline:
                    raise Fatal(f"another mushishi-backup held {state_dir}/run.lock for "
                                f"{wait_s:.0f}s (backup.lock_wait_s)") from None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), timeout=1.0)
        yield
    finally:
        handle.close()


def share_with_group(root: Path, gid: int) -> bool:
    """Make a local repository readable by group `gid` (the watchdog reads its snapshots).

    restic (0.14+) takes a group-readable `config` as the hint to create every new file
    group-readable too. Returns whether anything had to change.
    """
    config = root / "config"
    try:
        info = config.stat()
    except FileNotFoundError:
        return False
    if info.st_gid == gid and info.st_mode & stat.S_IRGRP:
        return False
    for directory, _, files in os.walk(root):
        for path in [Path(directory), *(Path(directory) / f for f in files)]:
            entry = path.lstat()
            if entry.st_gid != gid:
                os.chown(path, -1, gid, follow_symlinks=False)
            # No setgid bit (RestrictSUIDSGID= forbids setting it): the runner's own group
            # is the group, and `mushishi install` creates the directory setgid already.
            wanted = stat.S_IRGRP | (stat.S_IXGRP if stat.S_ISDIR(entry.st_mode) else 0)
            if entry.st_mode & wanted != wanted:
                # A setgid bit inherited from `mushishi install`'s directory is dropped
                # here: RestrictSUIDSGID= refuses any chmod that keeps it. The runner's
                # own group (Group=mushishi) owns what restic creates from now on.
                path.chmod((stat.S_IMODE(entry.st_mode) | wanted)
                           & ~(stat.S_ISUID | stat.S_ISGID))
    return True


# -- restic access -------------------------------------------------------------------------

@dataclass
class Access:
    """How this process reaches the repository."""

    restic: Restic
    processes: Processes


def access(settings: BackupSettings, *, environ: Mapping[str, str],
           dotenv: Mapping[str, str | None] | None = None,
           stopping: asyncio.Event | None = None, grace_s: float = 120.0,
           monotonic: Callable[[], float] = time.monotonic, cache: bool = True) -> Access:
    """Restic with the password from its credential; raise Fatal naming what is missing."""
    binary = Path(settings.restic)
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise Fatal(f"restic not found at {settings.restic}: install restic and run "
                    f"`mushishi install` (it records restic's path in backup.restic), or set "
                    f"backup.restic")
    credential = find_credential(settings.password_credential, environ=environ,
                                 dotenv=dotenv or {})
    if credential is None:
        raise Fatal(f"the repository password credential {settings.password_credential!r} "
                    f"(backup.password_credential) is missing: put it in /etc/mushishi/"
                    f"credentials/{settings.password_credential} and run `mushishi install`")
    env = {"LC_ALL": "C.UTF-8", "RESTIC_PROGRESS_FPS": "0.2"}
    for name in ("TMPDIR", "TZ"):
        if environ.get(name):
            env[name] = environ[name]
    password_file = None
    if credential.source == "credential":
        password_file = str(Path(environ["CREDENTIALS_DIRECTORY"]) / credential.name)
    else:
        env["RESTIC_PASSWORD"] = credential.value
    restic = Restic(settings.restic, settings.repository, password_file,
                    settings.cache_dir if cache else None, settings.limit_upload_kib)
    processes = Processes(env=env, secrets=[credential.value], stopping=stopping,
                          grace_s=grace_s, monotonic=monotonic)
    return Access(restic, processes)


def _is_dir(path: Path) -> bool:
    return path.is_dir()


async def open_repository(settings: BackupSettings, repo: Access, *, create: bool) -> bool:
    """Make sure the repository exists and the password opens it; True when just created."""
    local = local_repository_path(settings.repository)
    if local and not _is_dir(Path(local).parent):
        raise Fatal(f"the parent of the repository {local} (backup.repository) does not "
                    f"exist: is its disk mounted?")
    probe = await repo.processes.run(repo.restic.cat_config())
    kind = classify(probe.returncode, probe.stderr)
    if kind is ExitClass.OK:
        return False
    if kind is ExitClass.REPO_MISSING and create:
        log.info("no restic repository at %s yet: initialising it", settings.repository)
        created = await repo.processes.run(repo.restic.init())
        if created.returncode != 0:
            hint = (" (`mushishi install` creates the directory and lets the unit write it)"
                    if local and not _is_dir(Path(local)) else "")
            raise Fatal(f"restic init {settings.repository} failed: "
                        f"{first_error_line(created.stderr)}{hint}")
        return True
    if kind is ExitClass.REPO_MISSING:
        raise Fatal(f"no restic repository at {settings.repository} (backup.repository); "
                    f"`mushishi-backup run` creates it")
    if kind is ExitClass.WRONG_PASSWORD:
        raise Fatal(f"the password in credential {settings.password_credential!r} does not "
                    f"open the repository {settings.repository}")
    if kind is ExitClass.INTERRUPTED:
        raise Fatal("stopped")
    raise Fatal(f"cannot open repository {settings.repository}: "
                f"{first_error_line(probe.stderr)}")


async def clear_stale_locks(repo: Access, deps: Deps) -> list[str]:
    """Find locks left by killed runs and remove them with `restic unlock`.

    `unlock` without --remove-all deletes only what restic itself calls stale (this host's
    process is gone, or 30 minutes without a refresh), so a live run's lock is never touched.
    """
    listed = await repo.processes.run(repo.restic.list_locks())
    if listed.returncode != 0:
        log.warning("cannot list locks: %s", first_error_line(listed.stderr))
        return []
    stale: list[str] = []
    now = deps.now()
    for lock_id in listed.stdout.split():
        shown = await repo.processes.run(repo.restic.cat_lock(lock_id))
        if shown.returncode != 0:
            continue  # the lock went away while we looked
        try:
            lock = parse_lock(lock_id, shown.stdout)
        except (ValueError, KeyError):
            continue
        if is_stale(lock, now=now, hostname=deps.hostname, pid_alive=deps.pid_alive):
            stale.append(f"lock {lock_id[:8]} of PID {lock.pid} on {lock.hostname} from "
                         f"{lock.time.isoformat(timespec='seconds')}"
                         f"{' (exclusive)' if lock.exclusive else ''}")
        else:
            log.info("lock %s of live PID %s on %s left alone", lock_id[:8], lock.pid,
                     lock.hostname)
    if stale:
        unlocked = await repo.processes.run(repo.restic.unlock())
        if unlocked.returncode != 0:
            raise Fatal(f"stale locks found ({'; '.join(stale)}) but restic unlock failed: "
                        f"{first_error_line(unlocked.stderr)}")
        for line in stale:
            log.warning("cleared stale %s (a killed or crashed restic)", line)
    return stale


# -- run -----------------------------------------------------------------------------------

def _human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{count} B"
        value /= 1024
    return f"{count} B"


async def backup_set(settings: BackupSettings, repo: Access, backup_set: BackupSet,
                     deps: Deps) -> SetResult:
    """One `restic backup` of one declared set."""
    last_status = [float("-inf")]

    def progress(line: str) -> None:
        parsed = parse_progress(line)
        if parsed is None or deps.monotonic() - last_status[0] < PROGRESS_EVERY_S:
            return
        last_status[0] = deps.monotonic()
        fraction, done, total = parsed
        deps.notifier.status(f"backing up {backup_set.path}: {fraction:.0%} "
                             f"({_human_bytes(done)} of {_human_bytes(total)})")

    deps.notifier.status(f"backing up {backup_set.path}")
    result = await repo.processes.run(
        repo.restic.backup([backup_set.path], excludes=backup_set.exclude, tags=settings.tags),
        on_line=progress)
    kind = classify(result.returncode, result.stderr)
    summary = parse_backup(result.stdout, result.stderr)
    status = core.set_status(kind)
    error = None
    if status == "partial":
        error = (f"restic exit 3: snapshot {summary.snapshot_id} lacks "
                 f"{len(summary.unreadable)} unreadable file(s)")
    elif status != "ok":
        error = f"restic backup exited {result.returncode}: {first_error_line(result.stderr)}"
    return SetResult(backup_set.path, backup_set.reason, status, summary.snapshot_id,
                     summary.files_new, summary.files_changed, summary.bytes_added,
                     summary.unreadable[:50], error)


async def retention(settings: BackupSettings, repo: Access) -> RetentionResult:
    """keep daily/weekly/monthly, then prune what no snapshot needs any more."""
    outcome = RetentionResult(ran=True)
    result = await repo.processes.run(repo.restic.forget_prune(
        keep_daily=settings.keep_daily, keep_weekly=settings.keep_weekly,
        keep_monthly=settings.keep_monthly, tags=settings.tags))
    if result.returncode != 0:
        outcome.error = (f"restic forget --prune exited {result.returncode}: "
                         f"{first_error_line(result.stderr)}")
        return outcome
    with contextlib.suppress(ValueError, IndexError, AttributeError):
        outcome.kept, outcome.removed = parse_forget(result.stdout)
    return outcome


def backup_metrics(record: dict[str, Any]) -> Any:
    """The run's facts as a registry for node_exporter's textfile collector."""
    registry = new_registry("backup")

    def gauge(name: str, text: str, value: float, labels: dict[str, str] | None = None) -> None:
        metric = Gauge(name, text, list(labels or {}), registry=registry)
        (metric.labels(**labels) if labels else metric).set(value)

    finished = datetime.fromisoformat(record["finished"])
    gauge("mushishi_backup_last_run_timestamp_seconds", "End of the last backup run.",
          finished.timestamp())
    if record.get("last_success_time"):
        gauge("mushishi_backup_last_success_timestamp_seconds",
              "End of the last run whose outcome was ok or warning.",
              datetime.fromisoformat(record["last_success_time"]).timestamp())
    gauge("mushishi_backup_run_duration_seconds", "Duration of the last run.",
          record["duration_s"])
    outcome = Gauge("mushishi_backup_outcome", "1 for the last run's outcome, 0 for the others.",
                    ["outcome"], registry=registry)
    for value in Outcome:
        outcome.labels(outcome=value.value).set(1 if record["outcome"] == value.value else 0)
    gauge("mushishi_backup_added_bytes", "Bytes added to the repository by the last run.",
          record["bytes_added"])
    gauge("mushishi_backup_new_files", "New files in the last run's snapshots.",
          record["files_new"])
    gauge("mushishi_backup_changed_files", "Changed files in the last run's snapshots.",
          record["files_changed"])
    gauge("mushishi_backup_warnings", "Warnings of the last run (see last.json).",
          len(record["warnings"]))
    set_ok = Gauge("mushishi_backup_set_ok", "1 when the set is in a complete new snapshot.",
                   ["path"], registry=registry)
    for item in record["sets"]:
        set_ok.labels(path=item["path"]).set(1 if item["status"] == "ok" else 0)
    verify = record["verify"]
    gauge("mushishi_backup_verify_ok", "1 when restore verification matched every sample.",
          1 if verify["outcome"] == "ok" else 0)
    gauge("mushishi_backup_verify_checked_files", "Files restored and compared.",
          verify["files_checked"])
    gauge("mushishi_backup_verify_mismatched_files", "Restored files that differ or failed.",
          len(verify["mismatches"]))
    gauge("mushishi_backup_retention_removed_snapshots", "Snapshots removed by retention.",
          record["retention"]["removed"])
    return registry


def check_metrics(record: dict[str, Any]) -> Any:
    """The check's facts as a registry (its own `daemon` label: node_exporter serves this
    file beside the backup's, and one series in two textfiles is a gathering error)."""
    registry = new_registry("backup_check")
    Gauge("mushishi_backup_check_last_run_timestamp_seconds", "End of the last restic check.",
          registry=registry).set(datetime.fromisoformat(record["finished"]).timestamp())
    Gauge("mushishi_backup_check_ok", "1 when the last restic check found no error.",
          registry=registry).set(1 if record["outcome"] == "ok" else 0)
    Gauge("mushishi_backup_check_duration_seconds", "Duration of the last restic check.",
          registry=registry).set(record["duration_s"])
    return registry


def _publish(state_dir: Path, result_file: str, textfile: str, textfile_dir: str,
             record: dict[str, Any], registry_of: Callable[[dict[str, Any]], Any]) -> None:
    """Metrics textfile, then the result file and a history line (always written)."""
    try:
        write_textfile(registry_of(record), textfile_dir, textfile)
    except OSError as error:
        message = (f"cannot write the metrics textfile in {textfile_dir} "
                   f"(backup.textfile_dir): {error.strerror or error}")
        log.warning("%s", message)
        record.setdefault("warnings", []).append(message)
    write_json_atomic(state_dir / result_file, record)
    append_history(state_dir / "history.jsonl", record)


async def run_backup(settings: MushishiSettings, deps: Deps) -> int:
    """`mushishi-backup run`: back up every set, apply retention, verify a restore sample."""
    config = settings.backup
    state_dir = Path(config.state_dir)
    started = deps.now()
    previous = read_json(state_dir / "last.json")
    warnings: list[str] = []
    errors: list[str] = []
    results: dict[str, SetResult] = {}
    stale: list[str] = []
    kept = RetentionResult()
    verified = VerifyResult()
    fatal: str | None = None
    try:
        async with run_lock(state_dir, config.lock_wait_s, deps.stopping):
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
            stale = await clear_stale_locks(repo, deps)
            warnings += [f"cleared stale {line}: a previous run was killed" for line in stale]
            if not config.sets:
                raise Fatal("no [[backup.sets]] declared: nothing is backed up")
            present, missing = core.plan_sets(config.sets, deps.path_exists)
            for item in missing:
                results[item.path] = item
                warnings.append(item.error or f"{item.path} is missing")
                log.warning("%s", item.error)
            for item in present:
                outcome = await backup_set(config, repo, item, deps)
                results[item.path] = outcome
                if outcome.error:
                    (errors if outcome.status == "failed" else warnings).append(
                        f"{item.path}: {outcome.error}")
                log.info("backup of %s: %s (snapshot %s, %d new files, %s added)", item.path,
                         outcome.status, outcome.snapshot_id, outcome.files_new,
                         _human_bytes(outcome.bytes_added))
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
    _publish(state_dir, "last.json", "mushishi_backup", config.textfile_dir, record,
             backup_metrics)
    summary = (f"backup {outcome.value}: {len(record['snapshot_ids'])} snapshot(s), "
               f"{_human_bytes(record['bytes_added'])} added, verify {verified.outcome}")
    (log.info if status == 0 else log.error)("%s", summary)
    deps.notifier.status(summary)
    return status


async def run_check(settings: MushishiSettings, deps: Deps) -> int:
    """`mushishi-backup check`: restic check, reading back a subset of the data."""
    config = settings.backup
    state_dir = Path(config.state_dir)
    started = deps.now()
    previous = read_json(state_dir / "check.json")
    error: str | None = None
    stale: list[str] = []
    try:
        async with run_lock(state_dir, config.lock_wait_s, deps.stopping):
            repo = access(config, environ=deps.environ, dotenv=deps.dotenv,
                          stopping=deps.stopping, grace_s=deps.grace_s,
                          monotonic=deps.monotonic)
            await open_repository(config, repo, create=False)
            stale = await clear_stale_locks(repo, deps)
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
    _publish(state_dir, "check.json", "mushishi_backup_check", config.textfile_dir, record,
             check_metrics)
    if error:
        log.error("restic check failed: %s", error)
        deps.notifier.status(f"check failed: {error}")
        return 1
    log.info("restic check passed (read %s of the data)", config.check_read_data_subset)
    deps.notifier.status("check ok")
    return 0
