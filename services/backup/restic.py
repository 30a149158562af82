"""restic, as pure functions: command lines, exit-code classes, and parsers of its output.

Nothing here runs a process (that is `process.run`). Every command line starts from
`Restic.base()`, so the binary is always the configured absolute path, the repository is
always explicit, and the password never appears in an argv.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from mushishi.shared.config.backup import local_repository_path

__all__ = ["local_repository_path"]  # re-exported: restic's view of a repository

# restic 0.14 has no exit codes for these; its messages say it (0.17 adds codes 10-12).
_REPO_MISSING = re.compile(
    r"Is there a repository at the following location\?|repository does not exist|"
    r"unable to open config file")
_WRONG_PASSWORD = re.compile(r"wrong password or no key found")
_LOCKED = re.compile(r"repository is already locked")

# restic itself calls a lock stale after 30 minutes without a refresh (it refreshes every 5).
LOCK_STALE_AFTER = timedelta(minutes=30)


class ExitClass(StrEnum):
    """What a restic exit means for mushishi."""

    OK = "ok"
    PARTIAL = "partial"            # 3: snapshot written, some source files unreadable
    FATAL = "fatal"                # 1 (and anything unknown): nothing was written
    REPO_MISSING = "repo-missing"  # 10, or restic 0.14's message
    LOCKED = "locked"              # 11, or the message
    WRONG_PASSWORD = "wrong-password"  # noqa: S105 (12, or the message)
    INTERRUPTED = "interrupted"    # 130 (SIGINT) or killed by a signal


def classify(returncode: int, stderr: str = "") -> ExitClass:
    """Classify a restic exit; 3 is a partial backup and never success."""
    if returncode == 0:
        return ExitClass.OK
    if returncode == 3:
        return ExitClass.PARTIAL
    if returncode == 10 or (returncode == 1 and _REPO_MISSING.search(stderr)):
        return ExitClass.REPO_MISSING
    if returncode == 11 or (returncode == 1 and _LOCKED.search(stderr)):
        return ExitClass.LOCKED
    if returncode == 12 or (returncode == 1 and _WRONG_PASSWORD.search(stderr)):
        return ExitClass.WRONG_PASSWORD
    if returncode in (130, 143) or returncode < 0:
        return ExitClass.INTERRUPTED
    return ExitClass.FATAL


@dataclass(frozen=True, slots=True)
class Restic:
    """How to reach one repository: binary, repository, password file, cache, bandwidth."""

    binary: str
    repository: str
    password_file: str | None = None  # None: the password comes in RESTIC_PASSWORD
    cache_dir: str | None = None      # None: --no-cache
    limit_upload_kib: int | None = None
    options: tuple[str, ...] = ()     # extended options, `-o key=value` (sftp.command)

    def base(self, *, cache: bool = True) -> list[str]:
        """The argv prefix of every command."""
        argv = [self.binary, "--repo", self.repository]
        if self.password_file is not None:
            argv += ["--password-file", self.password_file]
        if cache and self.cache_dir is not None:
            argv += ["--cache-dir", self.cache_dir]
        else:
            argv.append("--no-cache")
        if self.limit_upload_kib is not None:
            argv += ["--limit-upload", str(self.limit_upload_kib)]
        for option in self.options:
            argv += ["-o", option]
        return argv

    def _from(self, source: Restic) -> list[str]:
        argv = ["--from-repo", source.repository]
        if source.password_file is not None:
            argv += ["--from-password-file", source.password_file]
        return argv  # else restic reads RESTIC_FROM_PASSWORD

    def init_copy_of(self, source: Restic) -> list[str]:
        """Create this repository with `source`'s chunker parameters, so the snapshots copied
        into it deduplicate as they did in the source."""
        return [*self.base(cache=False), "init", "--copy-chunker-params", *self._from(source)]

    def copy_from(self, source: Restic, *, tags: Sequence[str] = ()) -> list[str]:
        """Copy into this repository every snapshot of `source` (with all `tags`) that it
        lacks: the new ones, and any an earlier, failed copy missed."""
        argv = [*self.base(), "copy", *self._from(source)]
        if tags:
            argv += ["--tag", ",".join(tags)]
        return argv

    def init(self) -> list[str]:
        """Create the repository (non-interactive: the password comes from the credential)."""
        return [*self.base(cache=False), "init"]

    def list_locks(self) -> list[str]:
        """IDs of the lock files in the repository; also the probe of whether it exists and
        the password opens it."""
        return [*self.base(cache=False), "--no-lock", "list", "locks"]

    def cat_lock(self, lock_id: str) -> list[str]:
        """One lock as JSON: time, exclusive, hostname, username, pid."""
        return [*self.base(cache=False), "--no-lock", "cat", "lock", lock_id]

    def unlock(self) -> list[str]:
        """Remove stale locks only (never `--remove-all`: a live lock is someone's work)."""
        return [*self.base(cache=False), "unlock"]

    def backup(self, paths: Sequence[str], *, excludes: Sequence[str] = (),
               tags: Sequence[str] = (), time: datetime | None = None) -> list[str]:
        """Back up `paths` into one snapshot, with JSON progress and summary."""
        argv = [*self.base(), "--json", "backup"]
        for tag in tags:
            argv += ["--tag", tag]
        for pattern in excludes:
            argv += ["--exclude", pattern]
        if time is not None:
            argv += ["--time", time.strftime("%Y-%m-%d %H:%M:%S")]
        return [*argv, "--", *paths]

    def forget_prune(self, *, keep_daily: int, keep_weekly: int, keep_monthly: int,
                     tags: Sequence[str] = ()) -> list[str]:
        """Retention over this box's snapshots (grouped by host and paths), then prune."""
        argv = [*self.base(), "--json", "forget", "--prune",
                "--keep-daily", str(keep_daily), "--keep-weekly", str(keep_weekly),
                "--keep-monthly", str(keep_monthly)]
        if tags:
            argv += ["--tag", ",".join(tags)]  # one --tag with a comma: snapshots with all
        return argv

    def snapshots(self, *, tags: Sequence[str] = ()) -> list[str]:
        """Every snapshot as JSON, without taking a lock (works on a read-only repository)."""
        argv = [*self.base(cache=False), "--no-lock", "--json", "snapshots"]
        if tags:
            argv += ["--tag", ",".join(tags)]
        return argv

    def ls(self, snapshot_id: str) -> list[str]:
        """The nodes of one snapshot, one JSON object per line."""
        return [*self.base(), "--json", "ls", snapshot_id]

    def restore(self, snapshot_id: str, target: str, includes: Iterable[str]) -> list[str]:
        """Restore exactly the files `includes` from the repository itself (no cache)."""
        argv = [*self.base(cache=False), "restore", snapshot_id, "--target", target]
        for path in includes:
            argv += ["--include", escape_pattern(path)]
        return argv

    def check(self, read_data_subset: str | None) -> list[str]:
        """Structure check, plus reading back a subset of the data packs."""
        argv = [*self.base(), "check"]
        if read_data_subset:
            argv.append(f"--read-data-subset={read_data_subset}")
        return argv


def sftp_command(ssh: str, user: str | None, host: str, port: str | None, *,
                 known_hosts: str, identity_file: str, log_file: str | None = None) -> str:
    """restic's `sftp.command`: ssh with the host key pinned to `known_hosts` alone, the
    key `identity_file` alone, no config file, no prompt, a dead host noticed within a
    minute, and what ssh says written to `log_file` (restic splits this line on spaces; the
    paths in it have none)."""
    argv = [ssh, "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "UpdateHostKeys=no", "-o", "IdentitiesOnly=yes", "-i", identity_file,
            "-o", "ConnectTimeout=30", "-o", "ServerAliveInterval=15",
            "-o", "ServerAliveCountMax=4"]
    if log_file is not None:
        argv += ["-E", log_file]
    if port is not None:
        argv += ["-p", port]
    if user is not None:
        argv += ["-l", user]
    return " ".join([*argv, host, "-s", "sftp"])


def escape_pattern(path: str) -> str:
    """A literal path as a restic include pattern (`*`, `?`, `[` and `\\` escaped)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", path)


@dataclass
class BackupSummary:
    """What one `restic backup --json` did."""

    snapshot_id: str | None = None
    files_new: int = 0
    files_changed: int = 0
    files_unmodified: int = 0
    bytes_added: int = 0
    total_files: int = 0
    total_bytes: int = 0
    unreadable: list[str] = field(default_factory=list)  # "path: error"


def _json_lines(text: str) -> Iterable[dict[str, Any]]:
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            yield value


def parse_backup(stdout: str, stderr: str) -> BackupSummary:
    """The summary line of stdout and the per-file errors of stderr."""
    summary = BackupSummary()
    for message in _json_lines(stdout):
        if message.get("message_type") == "summary":
            summary.snapshot_id = message.get("snapshot_id")
            summary.files_new = int(message.get("files_new", 0))
            summary.files_changed = int(message.get("files_changed", 0))
            summary.files_unmodified = int(message.get("files_unmodified", 0))
            summary.bytes_added = int(message.get("data_added", 0))
            summary.total_files = int(message.get("total_files_processed", 0))
            summary.total_bytes = int(message.get("total_bytes_processed", 0))
    for message in _json_lines(stderr):
        if message.get("message_type") == "error":
            error = message.get("error") or {}
            reason = error.get("Err") if isinstance(error, dict) else error
            item = message.get("item") or (error.get("Path") if isinstance(error, dict) else "")
            summary.unreadable.append(f"{item}: {_errno_text(reason)}")
    return summary


def _errno_text(reason: object) -> str:
    if isinstance(reason, int):
        return os.strerror(reason)
    return str(reason)


def parse_progress(line: str) -> tuple[float, int, int] | None:
    """(fraction done, bytes done, total bytes) from a `backup --json` status line."""
    if not line.startswith("{"):
        return None
    try:
        message = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(message, dict) or message.get("message_type") != "status":
        return None
    return (float(message.get("percent_done", 0.0)), int(message.get("bytes_done", 0)),
            int(message.get("total_bytes", 0)))


@dataclass(frozen=True, slots=True)
class LockInfo:
    """One lock file in the repository."""

    lock_id: str
    time: datetime
    exclusive: bool
    hostname: str
    pid: int


def parse_lock(lock_id: str, text: str) -> LockInfo:
    """`restic cat lock ID` output."""
    data = json.loads(text)
    return LockInfo(lock_id, datetime.fromisoformat(data["time"]), bool(data.get("exclusive")),
                    str(data.get("hostname", "")), int(data.get("pid", 0)))


def is_stale(lock: LockInfo, *, now: datetime, hostname: str,
             pid_alive: Callable[[int], bool]) -> bool:
    """restic's own rule: unrefreshed for 30 minutes, or this host's process is gone."""
    if now - lock.time > LOCK_STALE_AFTER:
        return True
    return lock.hostname == hostname and not pid_alive(lock.pid)


def parse_snapshot_times(stdout: str) -> list[datetime]:
    """Times of `restic snapshots --json`."""
    return [snapshot.time for snapshot in parse_snapshots(stdout)]


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """One snapshot of `restic snapshots --json`; `original` is set on a copied one (the
    source snapshot's full id)."""

    id: str
    short_id: str
    time: datetime
    original: str | None = None
    paths: tuple[str, ...] = ()


def parse_snapshots(stdout: str) -> list[SnapshotInfo]:
    """`restic snapshots --json`."""
    data = json.loads(stdout or "[]")
    return [_snapshot_info(item) for item in data or []]


def _snapshot_info(item: dict[str, Any]) -> SnapshotInfo:
    return SnapshotInfo(str(item.get("id", "")), str(item.get("short_id", "")),
                        datetime.fromisoformat(item["time"]), item.get("original"),
                        tuple(item.get("paths") or ()))


def newest_containing(snapshots: Iterable[SnapshotInfo], path: str) -> SnapshotInfo | None:
    """The newest snapshot whose backed-up paths hold `path` (each set is a snapshot of its
    own, so restic's `latest` may be another set's)."""
    holding = [s for s in snapshots
               if any(path == p or path.startswith(p.rstrip("/") + "/") for p in s.paths)]
    return max(holding, key=lambda s: s.time, default=None)


@dataclass(frozen=True, slots=True)
class FileNode:
    """A regular file in a snapshot."""

    path: str
    size: int
    mtime: datetime


def parse_ls_node(line: str) -> FileNode | None:
    """A regular file from one line of `restic ls --json`; None for anything else."""
    if '"struct_type":"node"' not in line or '"type":"file"' not in line:
        return None
    data = json.loads(line)
    return FileNode(data["path"], int(data.get("size", 0)), datetime.fromisoformat(data["mtime"]))


def parse_forget(stdout: str) -> tuple[int, int]:
    """(snapshots kept, snapshots removed) from `forget --json` (its first line)."""
    groups = _forget_groups(stdout)
    kept = sum(len(group.get("keep") or []) for group in groups)
    removed = sum(len(group.get("remove") or []) for group in groups)
    return kept, removed


def parse_forget_kept(stdout: str) -> list[SnapshotInfo]:
    """The snapshots `forget --json` kept: every snapshot of its tags left in the
    repository (what `snapshots --tag` would list next; the ids from the repository, their
    contents through restic's cache). ValueError when forget printed no groups: restic
    prints nothing at all with no keep policy or no snapshot of those tags, which says
    nothing of what is there. ValueError, KeyError or TypeError when the output is not
    restic's."""
    if not stdout.strip():
        raise ValueError("forget --json printed no groups")
    return [_snapshot_info(item) for group in _forget_groups(stdout)
            for item in group.get("keep") or []]


def _forget_groups(stdout: str) -> list[dict[str, Any]]:
    first = stdout.lstrip().splitlines()[0] if stdout.strip() else "[]"
    groups = json.loads(first) or []
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise ValueError("forget --json did not print a list of groups")
    return groups


_COPY_SOURCE = re.compile(r"^snapshot ([0-9a-f]+) of \[")
_COPY_SAVED = re.compile(r"^snapshot ([0-9a-f]+) saved$")


def parse_copy(stdout: str) -> list[str]:
    """Short ids of the source snapshots `restic copy` copied (not those it skipped as
    already copied), from its text output."""
    copied: list[str] = []
    source: str | None = None
    for line in stdout.splitlines():
        line = line.strip()
        if match := _COPY_SOURCE.match(line):
            source = match.group(1)
        elif (match := _COPY_SAVED.match(line)) and source is not None:
            copied.append(source)
            source = None
    return copied


def first_error_line(stderr: str) -> str:
    """The line of restic's stderr that says what went wrong."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("Fatal:"):
            return line
    for line in lines:
        if not line.startswith("{"):
            return line
    return lines[-1] if lines else "(no message)"
