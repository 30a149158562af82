"""`[backup]`: restic backups of what cannot be downloaded again, and their off-box copies.

Also where a repository string is read: which host an off-box repository lives on (the
backup units may reach that host and no other), and how it is shown (never with a password
that a `rest:` URL may carry).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, field_validator

from mushishi.shared.config._base import AbsolutePath, CredentialName, Issue, Section

if TYPE_CHECKING:
    from mushishi.shared.config.settings import MushishiSettings

# Set by `mushishi install` in the backup units: the addresses each off-box host resolved to
# when install rendered IPAddressAllow= (services/backup/network.py reads and checks it).
PINNED_HOSTS_ENV = "MUSHISHI_PINNED_HOSTS"

_REMOTE_SCHEMES = ("sftp:", "rest:", "s3:", "b2:", "azure:", "gs:", "swift:", "rclone:")
# Off-box repositories whose one host the backup units can be confined to.
COPY_SCHEMES = ("sftp:", "rest:", "s3:")


def local_repository_path(repository: str) -> str | None:
    """The directory of a repository on this machine (a path or `local:PATH`), else None."""
    if repository.startswith(_REMOTE_SCHEMES) or not repository.startswith(("/", "local:")):
        return None
    return repository.removeprefix("local:")


@dataclass(frozen=True, slots=True)
class SftpLocation:
    """Who and where an `sftp:` repository is, as restic 0.14 reads it."""

    user: str | None
    host: str
    port: str | None


def sftp_location(repository: str) -> SftpLocation:
    """`sftp:[user@]host:path` or `sftp://[user@]host[:port]/path`; ValueError otherwise."""
    if repository.startswith("sftp://"):
        url = urlsplit(repository)
        if not url.hostname or not url.path:
            raise ValueError(f"{repository!r}: expected sftp://[user@]host[:port]//path")
        port = str(url.port) if url.port is not None else None
        return SftpLocation(url.username or None, url.hostname, port)
    rest = repository.removeprefix("sftp:")
    who, colon, path = rest.partition(":")
    user, at, host = who.rpartition("@")
    if not colon or not path or not host:
        raise ValueError(f"{repository!r}: expected sftp:[user@]host:/path")
    return SftpLocation(user if at else None, host, None)


def repository_host(repository: str) -> str | None:
    """The one host an `sftp:`, `rest:` or `s3:` repository is reached at; None for a local
    one, and for backends whose hosts restic picks itself (b2:, azure:, gs:, swift:,
    rclone:). Raise ValueError for a malformed one."""
    if repository.startswith("sftp:"):
        return sftp_location(repository).host
    for scheme in ("rest:", "s3:"):
        if repository.startswith(scheme):
            rest = repository.removeprefix(scheme)
            url = urlsplit(rest if "://" in rest else f"https://{rest}")
            if not url.hostname:
                raise ValueError(f"{repository!r}: no host in the {scheme} URL")
            return url.hostname
    return None


def display_repository(repository: str) -> str:
    """The repository as results, metrics and alerts show it: a password in a URL (`rest:`
    takes `https://user:password@host/`) is replaced by `***`."""
    scheme, colon, rest = repository.partition(":")
    if not colon or "://" not in rest:
        return repository
    url = urlsplit(rest)
    if url.password is None:
        return repository
    netloc = f"{url.username}:***@{url.hostname}" + (f":{url.port}" if url.port else "")
    return f"{scheme}:{urlunsplit(url._replace(netloc=netloc))}"


class BackupSet(Section):
    """One path to back up, with the reason it is irreplaceable."""

    path: AbsolutePath = Field(description="File or directory to back up.")
    reason: str = Field(
        min_length=1, description="Why it cannot be re-downloaded (required: a backup set "
        "without a reason is a convenience, not a need)."
    )
    exclude: list[str] = Field(default=[], description="restic --exclude patterns.")


class BackupCopy(Section):
    """A second repository, off the box: after each backup that wrote a snapshot,
    `restic copy` the snapshots it lacks, apply its own retention, restore-verify a sample
    from it."""

    repository: str = Field(
        description="restic repository off the box: `sftp:[user@]host:/path`, "
        "`rest:https://host/path`, `s3:host/bucket`, or a path (a disk that leaves the box). "
        "The backup units may reach this host's addresses (resolved by `mushishi install`) "
        "and no other.",
    )
    password_credential: CredentialName | None = Field(
        default=None, description="Credential holding this repository's password; unset: "
        "backup.password_credential (a password of its own is better: the host holding the "
        "copy then cannot read the box's own repository).",
    )
    known_hosts: AbsolutePath | None = Field(
        default=None, description="For sftp: the known_hosts file pinning the host's SSH "
        "key (ssh runs with StrictHostKeyChecking=yes and only this file). Required for "
        "sftp:, refused for the others.",
    )
    ssh_key_credential: CredentialName | None = Field(
        default=None, description="For sftp: the credential holding the SSH private key "
        "(the backup unit has no home directory and no ssh-agent). Required for sftp:.",
    )
    keep_daily: int = Field(default=7, ge=0, description="Retention in the copy: daily "
                            "snapshots kept (at least backup.keep_daily).")
    keep_weekly: int = Field(default=4, ge=0, description="Retention in the copy: weekly "
                             "snapshots kept (at least backup.keep_weekly).")
    keep_monthly: int = Field(default=12, ge=0, description="Retention in the copy: "
                              "monthly snapshots kept (at least backup.keep_monthly).")
    limit_upload_kib: int | None = Field(
        default=None, gt=0, description="`restic --limit-upload` in KiB/s for copying to "
        "this repository; unset is unlimited.",
    )

    @field_validator("repository")
    @classmethod
    def _copyable(cls, value: str) -> str:
        if local_repository_path(value) is None and not value.startswith(COPY_SCHEMES):
            raise ValueError(f"{value!r}: a copy is sftp:, rest:, s3: or a path (the backup "
                             "units are confined to the copy's one host, which b2:, azure:, "
                             "gs:, swift: and rclone: do not have)")
        try:
            repository_host(value)
        except ValueError as error:
            raise ValueError(str(error)) from None
        for character in ('"', "'", "\\"):
            if character in value:
                raise ValueError(f"{value!r}: quotes and backslashes are not supported")
        return value

    @field_validator("known_hosts")
    @classmethod
    def _plain_path(cls, value: str | None) -> str | None:
        if value is not None and any(c.isspace() or c in "\"'\\" for c in value):
            raise ValueError(f"{value!r}: ssh's option line takes no spaces or quotes here")
        return value


class BackupSettings(Section):
    """mushishi-backup (weekly) and mushishi-backup-check (monthly)."""

    restic: AbsolutePath = Field(
        default="/usr/bin/restic",
        description="Absolute path of restic; found once by `mushishi install`, never $PATH.",
    )
    repository: str = Field(
        default="/var/lib/mushishi/restic-repo", description="restic repository (path or URL)."
    )
    password_credential: CredentialName = Field(
        default="restic-password", description="Credential holding the repository password."
    )
    state_dir: AbsolutePath = Field(
        default="/var/lib/mushishi/backup", description="Result of each run (JSON) lives here."
    )
    textfile_dir: AbsolutePath = Field(
        default="/var/lib/prometheus/node-exporter",
        description="node_exporter textfile collector directory for backup metrics.",
    )
    keep_daily: int = Field(default=7, ge=0, description="Retention: daily snapshots kept.")
    keep_weekly: int = Field(default=4, ge=0, description="Retention: weekly snapshots kept.")
    keep_monthly: int = Field(default=3, ge=0, description="Retention: monthly snapshots kept.")
    check_read_data_subset: str = Field(
        default="5%", description="`restic check --read-data-subset` for the monthly check."
    )
    tags: list[str] = Field(default=["mushishi"], description="Tags on every snapshot.")
    verify_sample_files: int = Field(
        default=20, ge=0, description="Files restored and hash-compared after each backup "
        "(0 turns restore verification off, which the watchdog reports)."
    )
    verify_max_bytes: int = Field(
        default=1 << 30, gt=0, description="Upper bound on the bytes restored by one "
        "verification; larger files are left out of the sample."
    )
    cache_dir: AbsolutePath = Field(
        default="/var/cache/mushishi/restic",
        description="restic's local cache (`--cache-dir`); the units' CacheDirectory=.",
    )
    limit_upload_kib: int | None = Field(
        default=None, gt=0, description="`restic --limit-upload` in KiB/s, so a backup to a "
        "remote repository leaves bandwidth for everything else; unset is unlimited."
    )
    lock_wait_s: float = Field(
        default=3600, ge=0, description="How long `run` or `check` waits for the other one "
        "to finish before giving up (they never touch the repository at the same time)."
    )
    ssh: AbsolutePath = Field(
        default="/usr/bin/ssh", description="Absolute path of ssh, for sftp: copies."
    )
    sets: list[BackupSet] = Field(default=[], description="What to back up, and why.")
    copies: list[BackupCopy] = Field(
        default=[], description="Off-box repositories the new snapshots are copied to."
    )


def copy_key(index: int) -> str:
    """The config key of one copy, as errors name it."""
    return f"backup.copies[{index}]"


def repository_keys(backup: BackupSettings) -> list[tuple[str, str]]:
    """(config key, repository) of the primary and of every copy."""
    return [("backup.repository", backup.repository),
            *((f"{copy_key(i)}.repository", c.repository) for i, c in enumerate(backup.copies))]


def _same_repository(first: str, second: str) -> bool:
    local_first, local_second = local_repository_path(first), local_repository_path(second)
    if local_first and local_second:
        return Path(local_first).resolve() == Path(local_second).resolve()
    return first.rstrip("/") == second.rstrip("/")


def check(settings: MushishiSettings) -> list[Issue]:
    """Copies live elsewhere than the primary and each other, pin their sftp: host, and keep
    at least what the primary keeps (else every run would copy again what the copy's
    retention just removed)."""
    backup = settings.backup
    issues: list[Issue] = []
    for index, copy in enumerate(backup.copies):
        key = copy_key(index)
        if _same_repository(copy.repository, backup.repository):
            issues.append(Issue(f"{key}.repository", "is backup.repository itself: a copy "
                                "must live elsewhere (off the box)"))
        if any(_same_repository(copy.repository, other.repository)
               for other in backup.copies[:index]):
            issues.append(Issue(f"{key}.repository", "is also an earlier copy"))
        sftp = copy.repository.startswith("sftp:")
        if sftp and copy.known_hosts is None:
            issues.append(Issue(f"{key}.known_hosts", "required for an sftp: repository: "
                                "a known_hosts file pinning the host's key (see "
                                "docs/backup.md, setting up the off-box host)"))
        if sftp and copy.ssh_key_credential is None:
            issues.append(Issue(f"{key}.ssh_key_credential", "required for an sftp: "
                                "repository: the credential holding the SSH private key"))
        if not sftp:
            for name in ("known_hosts", "ssh_key_credential"):
                if getattr(copy, name) is not None:
                    issues.append(Issue(f"{key}.{name}", "only for an sftp: repository"))
        if sftp and backup.repository.startswith("sftp:"):
            issues.append(Issue(f"{key}.repository", "restic 0.14 gives both repositories "
                                "of `restic copy` one sftp.command: an sftp: copy needs a "
                                "primary repository that is not sftp:"))
        for period in ("daily", "weekly", "monthly"):
            mine, primary = getattr(copy, f"keep_{period}"), getattr(backup, f"keep_{period}")
            if mine < primary:
                issues.append(Issue(f"{key}.keep_{period}", f"{mine} is below "
                                    f"backup.keep_{period} ({primary}): every run would copy "
                                    "again what the copy's retention removed"))
    return issues


def known_hosts_issue(copy: BackupCopy, index: int, root: Path = Path("/")) -> Issue | None:
    """A copy's known_hosts file is missing (under `root`)."""
    if copy.known_hosts is None or (root / copy.known_hosts.lstrip("/")).is_file():
        return None
    return Issue(f"{copy_key(index)}.known_hosts",
                 f"{copy.known_hosts} does not exist: put the off-box host's key there "
                 f"(ssh-keyscan, checked by hand; see docs/backup.md)")


def host_issues(settings: MushishiSettings, root: Path = Path("/")) -> list[Issue]:
    """What must exist on this machine (under `root`) for the copies: their known_hosts
    files. Checked by `mushishi config check`, `mushishi install` and mushishi-backup, never
    by the other daemons (a missing file is the backup's problem, not the router's)."""
    return [issue for index, copy in enumerate(settings.backup.copies)
            if (issue := known_hosts_issue(copy, index, root)) is not None]
