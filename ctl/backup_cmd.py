"""`mushishi backup snapshots|restore [--from REPOSITORY]`: read the box's restic repository
or an off-box copy the way mushishi-backup reaches it (its password credential, and for an
sftp: copy the pinned host key and SSH key), as root.

    mushishi backup snapshots [--from REPOSITORY]
    mushishi backup restore PATH [PATH…] --target DIR [--from REPOSITORY] [--snapshot ID]

`restore` takes each PATH from the newest snapshot that holds it (each backup set is a
snapshot of its own), or from `--snapshot`, and writes it under DIR at its full path;
nothing is overwritten outside DIR. The command lines are mushishi-backup's own
(services/backup/restic.py); credentials come from /etc/mushishi/credentials.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from mushishi.ctl.settings import EX_CONFIG, settings_or_report
from mushishi.services.backup.core import Fatal
from mushishi.services.backup.repository import Access, access, copy_access
from mushishi.services.backup.restic import first_error_line, newest_containing, parse_snapshots
from mushishi.shared.config.backup import BackupSettings, display_repository
from mushishi.shared.credentials import CREDENTIALS_DIRECTORY_ENV

CREDENTIALS = "/etc/mushishi/credentials"


def configure(parser: argparse.ArgumentParser) -> None:
    """`snapshots` and `restore`, each with --from."""
    parser.add_argument("--config", help="config file (default: $MUSHISHI_CONFIG, else "
                        "/etc/mushishi/mushishi.toml)")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    frm = argparse.ArgumentParser(add_help=False)
    frm.add_argument("--from", dest="source", metavar="REPOSITORY",
                     help="backup.repository (the default) or a [[backup.copies]] repository, "
                     "as configured")
    sub.add_parser("snapshots", parents=[frm], help="list the snapshots of a repository")
    restore = sub.add_parser("restore", parents=[frm],
                             help="restore files or directories into a target directory")
    restore.add_argument("paths", nargs="+", metavar="PATH",
                         help="absolute path as it was backed up")
    restore.add_argument("--target", required=True, help="directory to restore into "
                         "(PATH lands at TARGET/PATH)")
    restore.add_argument("--snapshot", help="snapshot id (default: the newest holding PATH)")


def choose(backup: BackupSettings, source: str | None) -> int | None:
    """None for the primary, or the index of the copy `source` names; ValueError lists the
    repositories there are."""
    if source is None or source in (backup.repository, display_repository(backup.repository)):
        return None
    for index, copy in enumerate(backup.copies):
        if source in (copy.repository, display_repository(copy.repository)):
            return index
    known = [display_repository(r) for r in
             [backup.repository, *(c.repository for c in backup.copies)]]
    raise ValueError(f"--from {source!r} is neither backup.repository nor a "
                     f"[[backup.copies]] repository; they are: {', '.join(known)}")


def _environ(environ: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment, with the credentials directory of the box when the caller
    did not name one (root reads it; a unit has its own)."""
    result = dict(environ)
    if CREDENTIALS_DIRECTORY_ENV not in result and Path(CREDENTIALS).is_dir():
        result[CREDENTIALS_DIRECTORY_ENV] = CREDENTIALS
    return result


def _reach(backup: BackupSettings, index: int | None) -> Access:
    environ = _environ(os.environ)
    if index is None:
        return access(backup, environ=environ, cache=False)
    repo, _ = copy_access(backup, index, environ=environ)
    return repo


async def _snapshots(repo: Access, backup: BackupSettings) -> int:
    listed = await repo.processes.run(repo.restic.snapshots(tags=backup.tags))
    if listed.returncode != 0:
        print(f"restic snapshots on {display_repository(repo.restic.repository)} failed: "
              f"{first_error_line(listed.stderr)}", file=sys.stderr)
        return 1
    for snapshot in sorted(parse_snapshots(listed.stdout), key=lambda s: s.time):
        when = snapshot.time.astimezone().isoformat(timespec="seconds")
        print(f"{snapshot.short_id}  {when}  {' '.join(snapshot.paths)}")
    return 0


async def _restore(repo: Access, backup: BackupSettings, paths: list[str], target: str,
                   snapshot_id: str | None) -> int:
    shown = display_repository(repo.restic.repository)
    chosen: dict[str, list[str]] = {}
    if snapshot_id is not None:
        chosen[snapshot_id] = paths
    else:
        listed = await repo.processes.run(repo.restic.snapshots(tags=backup.tags))
        if listed.returncode != 0:
            print(f"restic snapshots on {shown} failed: {first_error_line(listed.stderr)}",
                  file=sys.stderr)
            return 1
        snapshots = parse_snapshots(listed.stdout)
        for path in paths:
            newest = newest_containing(snapshots, path)
            if newest is None:
                print(f"no snapshot in {shown} holds {path} (see `mushishi backup "
                      f"snapshots`)", file=sys.stderr)
                return 1
            chosen.setdefault(newest.short_id, []).append(path)
    for snapshot, includes in chosen.items():
        restored = await repo.processes.run(repo.restic.restore(snapshot, target, includes))
        if restored.returncode != 0:
            print(f"restic restore {snapshot} from {shown} failed: "
                  f"{first_error_line(restored.stderr)}", file=sys.stderr)
            return 1
        for path in includes:
            print(f"restored {path} from snapshot {snapshot} of {shown} into "
                  f"{Path(target) / path.lstrip('/')}")
    return 0


def run(args: argparse.Namespace) -> int:
    """0 when done; 1 with a line naming what failed; 78 for an invalid config."""
    settings = settings_or_report(args.config)
    if settings is None:
        return EX_CONFIG
    backup = settings.backup
    try:
        index = choose(backup, args.source)
        repo = _reach(backup, index)
    except (ValueError, Fatal) as error:
        print(f"mushishi backup: {error}", file=sys.stderr)
        return 1
    if args.action == "snapshots":
        return asyncio.run(_snapshots(repo, backup))
    if any(not p.startswith("/") for p in args.paths):
        print("mushishi backup restore: PATH must be absolute, as it was backed up",
              file=sys.stderr)
        return 2
    Path(args.target).mkdir(parents=True, exist_ok=True)
    return asyncio.run(_restore(repo, backup, list(args.paths), args.target, args.snapshot))
