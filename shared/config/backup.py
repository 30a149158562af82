"""`[backup]`: restic backups of what cannot be downloaded again."""

from __future__ import annotations

from pydantic import Field

from mushishi.shared.config._base import AbsolutePath, CredentialName, Section

_REMOTE_SCHEMES = ("sftp:", "rest:", "s3:", "b2:", "azure:", "gs:", "swift:", "rclone:")


def local_repository_path(repository: str) -> str | None:
    """The directory of a repository on this machine (a path or `local:PATH`), else None."""
    if repository.startswith(_REMOTE_SCHEMES) or not repository.startswith(("/", "local:")):
        return None
    return repository.removeprefix("local:")


class BackupSet(Section):
    """One path to back up, with the reason it is irreplaceable."""

    path: AbsolutePath = Field(description="File or directory to back up.")
    reason: str = Field(
        min_length=1, description="Why it cannot be re-downloaded (required: a backup set "
        "without a reason is a convenience, not a need)."
    )
    exclude: list[str] = Field(default=[], description="restic --exclude patterns.")


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
    sets: list[BackupSet] = Field(default=[], description="What to back up, and why.")
