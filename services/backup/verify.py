"""Restore verification: restore a random sample of files into a private temporary directory
and compare their SHA-256 with the sources.

A file whose source changed after the snapshot (size or mtime differ from what restic
recorded) proves nothing either way and is counted apart; a file restic cannot restore, or
whose bytes differ, fails the verification.
"""

from __future__ import annotations

import hashlib
import logging
import random
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mushishi.services.backup.core import (
    Reservoir,
    VerifyResult,
    split_sample,
    verify_outcome,
)
from mushishi.services.backup.process import Processes
from mushishi.services.backup.restic import FileNode, Restic, first_error_line, parse_ls_node

log = logging.getLogger("mushishi.backup.verify")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _microseconds(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def compare(node: FileNode, source: Path, restored: Path) -> str:
    """matched | changed (source differs from the snapshot's record) | a mismatch reason."""
    try:
        stat = source.stat()
    except FileNotFoundError:
        return "changed"
    if stat.st_size != node.size or stat.st_mtime_ns // 1000 != _microseconds(node.mtime):
        return "changed"
    if not restored.is_file():
        return "not restored"
    if restored.stat().st_size != node.size:
        return f"restored size {restored.stat().st_size} != {node.size}"
    if sha256_file(restored) != sha256_file(source):
        return "SHA-256 differs from the source"
    return "matched"


async def sample_snapshot(processes: Processes, restic: Restic, snapshot_id: str,
                          reservoirs: Sequence[Reservoir]) -> str | None:
    """Offer every regular file of the snapshot, streamed from `restic ls --json`, to each
    reservoir: None, or one line saying why the listing failed."""
    def offer(line: str) -> None:
        node = parse_ls_node(line)
        if node is not None:
            for reservoir in reservoirs:
                reservoir.offer(node)

    result = await processes.run(restic.ls(snapshot_id), on_line=offer, keep_stdout=False)
    if result.returncode != 0:
        return f"restic ls {snapshot_id}: {first_error_line(result.stderr)}"
    return None


@dataclass
class Sample:
    """The files picked from each snapshot (`sample_snapshots`), to restore and compare; or
    what went wrong picking them."""

    files: list[tuple[str, list[FileNode]]] = field(default_factory=list)  # (snapshot, nodes)
    error: str | None = None  # restic ls failed: nothing is restored
    off: str | None = None  # nothing to verify, and why (sampling off, no snapshot)

    def in_copy(self, copied: Mapping[str, str]) -> Sample:
        """This sample, picked from the primary's snapshots, to restore from their copies
        (`copied`: a primary snapshot id to its copy's): `restic copy` writes the very same
        trees, so every path picked is in the copy's snapshot too."""
        return Sample([(copied[snapshot], nodes) for snapshot, nodes in self.files],
                      self.error, self.off)


async def sample_snapshots(processes: Processes, restic: Restic, snapshot_ids: Sequence[str],
                           *, sample_files: int, max_bytes: int, rng: random.Random,
                           repositories: int = 1) -> list[Sample]:
    """Pick the files to verify from each snapshot with one `restic ls` of it: a share of
    `sample_files` each, within `max_bytes` in all, picked apart for each of `repositories`
    (the primary, and each copy holding the same snapshots). Picking only reads, so it may
    run while another process reads the repository (a `restic copy`); the restore comes
    later."""
    if sample_files <= 0:
        return [Sample(off="backup.verify_sample_files is 0: restore verification is off")
                for _ in range(repositories)]
    if not snapshot_ids:
        return [Sample(off="no snapshot to verify") for _ in range(repositories)]
    picked = [Sample() for _ in range(repositories)]
    budgets = [max_bytes] * repositories
    for snapshot_id, count in zip(snapshot_ids, split_sample(sample_files, len(snapshot_ids)),
                                  strict=True):
        if count == 0:
            continue
        reservoirs = [Reservoir(count, budget, rng) for budget in budgets]
        error = await sample_snapshot(processes, restic, snapshot_id, reservoirs)
        if error:
            for sample in picked:
                sample.error = error
            break
        for index, reservoir in enumerate(reservoirs):
            nodes = reservoir.sample()
            if nodes:
                budgets[index] -= sum(node.size for node in nodes)
                picked[index].files.append((snapshot_id, nodes))
    return picked


async def restore_sample(processes: Processes, restic: Restic, sample: Sample, *,
                         temp_parent: str | None = None) -> VerifyResult:
    """Restore `sample` into a private temp dir, snapshot by snapshot, and compare hashes."""
    result = VerifyResult()
    if sample.off is not None:
        result.error = sample.off
        return result
    restore_failed = sample.error is not None
    for snapshot_id, nodes in sample.files:
        workdir = Path(tempfile.mkdtemp(prefix="mushishi-verify-", dir=temp_parent))
        try:
            restored = await processes.run(
                restic.restore(snapshot_id, str(workdir), [n.path for n in nodes]))
            if restored.returncode != 0:
                restore_failed = True
                result.error = (f"restic restore {snapshot_id} exited {restored.returncode}: "
                                f"{first_error_line(restored.stderr)}")
            for node in nodes:
                verdict = compare(node, Path(node.path), workdir / node.path.lstrip("/"))
                result.files_checked += 1
                if verdict == "matched":
                    result.files_matched += 1
                    result.bytes_restored += node.size
                elif verdict == "changed":
                    result.files_changed_since_backup += 1
                else:
                    result.mismatches.append(f"{node.path}: {verdict} (snapshot {snapshot_id})")
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    if sample.error is not None:
        result.error = sample.error  # the listing that failed came after every restore here
    result.outcome = verify_outcome(result, restore_failed=restore_failed)
    if result.outcome == "inconclusive" and not result.error:
        result.error = ("every sampled file changed after the snapshot was taken; nothing "
                        "could be compared")
    return result


async def verify_snapshots(processes: Processes, restic: Restic, snapshot_ids: Sequence[str], *,
                           sample_files: int, max_bytes: int, rng: random.Random,
                           temp_parent: str | None = None) -> VerifyResult:
    """Restore a sample from each snapshot into a private temp dir and compare hashes."""
    [sample] = await sample_snapshots(processes, restic, snapshot_ids,
                                      sample_files=sample_files, max_bytes=max_bytes, rng=rng)
    return await restore_sample(processes, restic, sample, temp_parent=temp_parent)
