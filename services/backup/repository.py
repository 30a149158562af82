"""The restic repository as mushishi-backup (and the watchdog) reach it: access with the
password credential, opening or creating it, stale locks, one set's backup, retention.

Command lines come from `restic.Restic` (pure), every process runs through
`process.Processes`, and every failure the run cannot get past is a `Fatal` naming the fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from mushishi.services.backup import core
from mushishi.services.backup.core import Fatal, RetentionResult, SetResult
from mushishi.services.backup.process import Processes
from mushishi.services.backup.restic import (
    ExitClass,
    Restic,
    SnapshotInfo,
    classify,
    first_error_line,
    is_stale,
    local_repository_path,
    parse_backup,
    parse_forget,
    parse_forget_kept,
    parse_lock,
    parse_progress,
    sftp_command,
)
from mushishi.shared.config.backup import (
    BackupCopy,
    BackupSet,
    BackupSettings,
    copy_key,
    display_repository,
    known_hosts_issue,
    sftp_location,
)
from mushishi.shared.credentials import Credential, find_credential
from mushishi.shared.formatting import human_bytes

log = logging.getLogger("mushishi.backup")

PROGRESS_EVERY_S = 5.0


@dataclass
class Access:
    """How this process reaches the repository (and, for an sftp: copy, where its ssh
    writes what it has to say: restic itself only reports `EOF` when ssh gives up)."""

    restic: Restic
    processes: Processes
    ssh_log: Path | None = None

    def ssh_said(self) -> str:
        """` (ssh: <its last line>)` from the ssh log, or "" when it said nothing."""
        if self.ssh_log is None:
            return ""
        try:
            text = self.ssh_log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        lines = [line.strip("@ \t") for line in text.splitlines()]
        said = [line for line in lines if line]
        return f" (ssh: {said[-1]})" if said else ""


def _restic_binary(settings: BackupSettings) -> None:
    binary = Path(settings.restic)
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise Fatal(f"restic not found at {settings.restic}: install restic and run "
                    f"`mushishi install` (it records restic's path in backup.restic), or set "
                    f"backup.restic")


def _credential(name: str, key: str, environ: Mapping[str, str],
                dotenv: Mapping[str, str | None] | None) -> Credential:
    credential = find_credential(name, environ=environ, dotenv=dotenv or {})
    if credential is None:
        raise Fatal(f"the repository password credential {name!r} ({key}) is missing: put "
                    f"it in /etc/mushishi/credentials/{name} and run `mushishi install`")
    return credential


def _base_env(environ: Mapping[str, str]) -> dict[str, str]:
    env = {"LC_ALL": "C.UTF-8", "RESTIC_PROGRESS_FPS": "0.2"}
    for name in ("TMPDIR", "TZ"):
        if environ.get(name):
            env[name] = environ[name]
    return env


def access(settings: BackupSettings, *, environ: Mapping[str, str],
           dotenv: Mapping[str, str | None] | None = None,
           stopping: asyncio.Event | None = None, grace_s: float = 120.0,
           monotonic: Callable[[], float] = time.monotonic, cache: bool = True) -> Access:
    """Restic with the password from its credential; raise Fatal naming what is missing."""
    _restic_binary(settings)
    credential = _credential(settings.password_credential, "backup.password_credential",
                             environ, dotenv)
    env = _base_env(environ)
    password_file = None
    if credential.path is not None:
        password_file = str(credential.path)
    else:
        env["RESTIC_PASSWORD"] = credential.value
    restic = Restic(settings.restic, settings.repository, password_file,
                    settings.cache_dir if cache else None, settings.limit_upload_kib)
    processes = Processes(env=env, secrets=[credential.value], stopping=stopping,
                          grace_s=grace_s, monotonic=monotonic)
    return Access(restic, processes)


def copy_password_credential(settings: BackupSettings, index: int) -> tuple[str, str]:
    """(credential name, the key that names it) of one copy's password."""
    copy = settings.copies[index]
    if copy.password_credential is not None:
        return copy.password_credential, f"{copy_key(index)}.password_credential"
    return settings.password_credential, "backup.password_credential"


def ssh_log_path(settings: BackupSettings, index: int) -> Path:
    """Where ssh writes for copy `index` (`ssh -E`): the state directory, root's and not
    world-writable, so no one can point the file elsewhere; rewritten at each access."""
    return Path(settings.state_dir) / f"ssh-copy{index}.log"


def copy_access(settings: BackupSettings, index: int, *, environ: Mapping[str, str],
                dotenv: Mapping[str, str | None] | None = None,
                stopping: asyncio.Event | None = None, grace_s: float = 120.0,
                monotonic: Callable[[], float] = time.monotonic) -> tuple[Access, Restic]:
    """(restic on copy `index`, with the primary's password too for `restic copy`; the
    primary as the copy's source). Raise Fatal naming the key of what is missing."""
    _restic_binary(settings)
    copy = settings.copies[index]
    key = copy_key(index)
    source = _credential(settings.password_credential, "backup.password_credential",
                         environ, dotenv)
    name, name_key = copy_password_credential(settings, index)
    own = _credential(name, name_key, environ, dotenv)
    env = _base_env(environ)
    source_file = own_file = None
    if source.path is not None:
        source_file = str(source.path)
    else:
        env["RESTIC_FROM_PASSWORD"] = source.value
    if own.path is not None:
        own_file = str(own.path)
    else:
        env["RESTIC_PASSWORD"] = own.value
    options: tuple[str, ...] = ()
    ssh_log = None
    if copy.repository.startswith("sftp:"):
        ssh_log = ssh_log_path(settings, index)
        try:
            ssh_log.parent.mkdir(parents=True, exist_ok=True)
            ssh_log.write_text("", encoding="utf-8")
        except OSError as error:
            raise Fatal(f"cannot write {ssh_log} (backup.state_dir): "
                        f"{error.strerror or error}") from None
        options = (f"sftp.command={_ssh_command(settings, index, environ, dotenv, ssh_log)}",)
    primary = Restic(settings.restic, settings.repository, source_file, settings.cache_dir)
    restic = Restic(settings.restic, copy.repository, own_file, settings.cache_dir,
                    copy.limit_upload_kib, options)
    processes = Processes(env=env, secrets=[source.value, own.value], stopping=stopping,
                          grace_s=grace_s, monotonic=monotonic)
    log.debug("%s: %s", key, display_repository(copy.repository))
    return Access(restic, processes, ssh_log), primary


def _ssh_command(settings: BackupSettings, index: int, environ: Mapping[str, str],
                 dotenv: Mapping[str, str | None] | None, log_file: Path) -> str:
    copy = settings.copies[index]
    key = copy_key(index)
    if copy.known_hosts is None or copy.ssh_key_credential is None:
        raise Fatal(f"{key}: an sftp: repository needs known_hosts and ssh_key_credential")
    missing = known_hosts_issue(copy, index)
    if missing is not None:
        raise Fatal(str(missing))
    identity = find_credential(copy.ssh_key_credential, environ=environ, dotenv=dotenv or {})
    if identity is None or identity.path is None:
        raise Fatal(f"{key}.ssh_key_credential: the SSH key credential "
                    f"{copy.ssh_key_credential!r} is missing (ssh reads a file: put it in "
                    f"/etc/mushishi/credentials/{copy.ssh_key_credential}, mode 0600, and "
                    f"run `mushishi install`)")
    if any(c.isspace() for c in str(identity.path)):
        raise Fatal(f"{key}.ssh_key_credential: its path {identity.path} has a space, "
                    f"which restic's sftp.command cannot carry")
    location = sftp_location(copy.repository)
    return sftp_command(settings.ssh, location.user, location.host, location.port,
                        known_hosts=copy.known_hosts, identity_file=str(identity.path),
                        log_file=str(log_file))


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


def _is_dir(path: Path) -> bool:
    return path.is_dir()


@dataclass(frozen=True, slots=True)
class Opened:
    """A repository opened: whether this run created it, and its lock files' IDs then
    (listing them is the probe that opens it: one restic invocation, not two); `probed`
    False when no probe ran (`unlocked_local`)."""

    created: bool
    locks: tuple[str, ...]
    probed: bool = True


def unlocked_local(repository: str) -> bool:
    """A local repository that exists (its `config` file is there) and holds no lock file:
    no restic is using it and none was killed using it, so the probe that opens it (listing
    its locks: a restic start and its key derivation) would find nothing to clear."""
    local = local_repository_path(repository)
    if not local:
        return False
    root = Path(local)
    try:
        with os.scandir(root / "locks") as entries:
            if next(entries, None) is not None:
                return False
        return (root / "config").is_file()
    except OSError:
        return False


async def open_repository(settings: BackupSettings, repo: Access, *, create: bool,
                          unless_unlocked: bool = False) -> Opened:
    """Make sure the repository exists and the password opens it; with `unless_unlocked`,
    not for a local repository that holds no lock (`unlocked_local`): the first restic
    to open it then tries the password, and its failure is for `open_repository` again to
    explain."""
    if unless_unlocked and unlocked_local(settings.repository):
        return Opened(False, (), probed=False)
    return await _open(repo, settings.repository, "backup.repository",
                       settings.password_credential, repo.restic.init() if create else None)


async def open_copy(settings: BackupSettings, index: int, repo: Access, source: Restic,
                    *, create: bool) -> Opened:
    """Make sure copy `index` exists (created with the primary's chunker parameters, so its
    copied snapshots deduplicate) and its password opens it."""
    name, _ = copy_password_credential(settings, index)
    return await _open(repo, settings.copies[index].repository,
                       f"{copy_key(index)}.repository", name,
                       repo.restic.init_copy_of(source) if create else None)


async def _open(repo: Access, repository: str, key: str, credential: str,
                init: list[str] | None) -> Opened:
    shown = display_repository(repository)
    local = local_repository_path(repository)
    if local and not _is_dir(Path(local).parent):
        raise Fatal(f"the parent of the repository {local} ({key}) does not "
                    f"exist: is its disk mounted?")
    probe = await repo.processes.run(repo.restic.list_locks())
    kind = classify(probe.returncode, probe.stderr)
    if kind is ExitClass.OK:
        return Opened(False, tuple(probe.stdout.split()))
    if kind is ExitClass.REPO_MISSING and init is not None:
        log.info("no restic repository at %s yet: initialising it", shown)
        created = await repo.processes.run(init)
        if created.returncode != 0:
            hint = (" (`mushishi install` creates the directory and lets the unit write it)"
                    if local and not _is_dir(Path(local)) else "")
            raise Fatal(f"restic init {shown} failed: "
                        f"{first_error_line(created.stderr)}{repo.ssh_said()}{hint}")
        return Opened(True, ())
    if kind is ExitClass.REPO_MISSING:
        raise Fatal(f"no restic repository at {shown} ({key}); "
                    f"`mushishi-backup run` creates it")
    if kind is ExitClass.WRONG_PASSWORD:
        raise Fatal(f"the password in credential {credential!r} does not "
                    f"open the repository {shown}")
    if kind is ExitClass.INTERRUPTED:
        raise Fatal("stopped")
    raise Fatal(f"cannot open repository {shown} ({key}): "
                f"{first_error_line(probe.stderr)}{repo.ssh_said()}")


async def clear_stale_locks(repo: Access, opened: Opened, *, now: Callable[[], datetime],
                            hostname: str, pid_alive: Callable[[int], bool]) -> list[str]:
    """Find, among the locks listed when the repository was opened, those left by killed
    runs, and remove them with `restic unlock`.

    `unlock` without --remove-all deletes only what restic itself calls stale (this host's
    process is gone, or 30 minutes without a refresh), so a live run's lock is never touched.
    """
    stale: list[str] = []
    checked_at = now()
    for lock_id in opened.locks:
        shown = await repo.processes.run(repo.restic.cat_lock(lock_id))
        if shown.returncode != 0:
            continue  # the lock went away while we looked
        try:
            lock = parse_lock(lock_id, shown.stdout)
        except (ValueError, KeyError):
            continue
        if is_stale(lock, now=checked_at, hostname=hostname, pid_alive=pid_alive):
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


async def backup_set(settings: BackupSettings, repo: Access, backup_set: BackupSet, *,
                     status: Callable[[str], None],
                     monotonic: Callable[[], float] = time.monotonic) -> SetResult:
    """One `restic backup` of one declared set; progress goes to `status` every few seconds."""
    last_status = [float("-inf")]

    def progress(line: str) -> None:
        parsed = parse_progress(line)
        if parsed is None or monotonic() - last_status[0] < PROGRESS_EVERY_S:
            return
        last_status[0] = monotonic()
        fraction, done, total = parsed
        status(f"backing up {backup_set.path}: {fraction:.0%} "
               f"({human_bytes(done)} of {human_bytes(total)})")

    status(f"backing up {backup_set.path}")
    result = await repo.processes.run(
        repo.restic.backup([backup_set.path], excludes=backup_set.exclude, tags=settings.tags),
        on_line=progress)
    kind = classify(result.returncode, result.stderr)
    summary = parse_backup(result.stdout, result.stderr)
    set_status = core.set_status(kind)
    error = None
    if set_status == "partial":
        error = (f"restic exit 3: snapshot {summary.snapshot_id} lacks "
                 f"{len(summary.unreadable)} unreadable file(s)")
    elif set_status != "ok":
        error = f"restic backup exited {result.returncode}: {first_error_line(result.stderr)}"
    return SetResult(backup_set.path, backup_set.reason, set_status, summary.snapshot_id,
                     summary.files_new, summary.files_changed, summary.bytes_added,
                     summary.unreadable[:50], error)


async def retention(keep: BackupSettings | BackupCopy, repo: Access, *,
                    tags: Sequence[str]) -> tuple[RetentionResult, list[SnapshotInfo] | None]:
    """keep daily/weekly/monthly (the primary's or a copy's own), then prune what no
    snapshot needs any more: the outcome, and the snapshots of `tags` left in the repository
    as forget read them (None when it failed or printed something else)."""
    outcome = RetentionResult(ran=True)
    result = await repo.processes.run(repo.restic.forget_prune(
        keep_daily=keep.keep_daily, keep_weekly=keep.keep_weekly,
        keep_monthly=keep.keep_monthly, tags=tags))
    if result.returncode != 0:
        outcome.error = (f"restic forget --prune exited {result.returncode}: "
                         f"{first_error_line(result.stderr)}")
        return outcome, None
    left: list[SnapshotInfo] | None = None
    with contextlib.suppress(ValueError, IndexError, AttributeError, KeyError, TypeError):
        outcome.kept, outcome.removed = parse_forget(result.stdout)
        left = parse_forget_kept(result.stdout)
    return outcome, left
