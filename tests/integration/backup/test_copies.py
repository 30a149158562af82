"""Off-box copies (`[[backup.copies]]`) end to end with the real restic: `restic copy` of the
new snapshots after each backup, the copy's own retention, a restore sample verified from
the copy, a copy that cannot be reached failing the run on its own (and the next run
catching up), and the monthly check covering every copy.

Local directories stand in for the off-box repositories here (restic treats every backend
the same way for copy, forget and restore); tests/system/test_backup_copies.py runs the
same against an sftp: host in a network namespace.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

from tests.integration.backup.conftest import (
    REFUSED,
    BackupBox,
    random_file,
    refusing_restic,
    restic_spans,
    timed_restic,
)
from tests.integration.backup.test_restic_e2e import corrupt_largest_pack, populated


def copy_record(box: BackupBox, index: int = 0) -> dict:
    return box.last()["copies"][index]


def originals(box: BackupBox, copy: Path) -> set[str]:
    return {s.get("original", "")[:8] for s in box.snapshots(copy)}


def test_a_copy_gets_the_new_snapshots_and_a_restore_sample_verified_from_it(
        box: BackupBox) -> None:
    populated(box)
    copy = box.add_copy()
    result = box.run()
    assert result.returncode == 0, result.stderr
    last = box.last()
    assert last["outcome"] == "ok" and last["exit_status"] == 0
    # The primary's own retention (an exclusive lock) ran after the copy had read from the
    # primary, while the copy went on with its own retention and restore sample.
    assert last["retention"]["ran"] and last["retention"]["error"] is None, last["retention"]
    assert last["warnings"] == [] and last["verify"]["outcome"] == "ok"
    [record] = last["copies"]
    assert record["repository"] == str(copy)
    assert record["outcome"] == "ok", record
    assert record["verified"] is True
    assert record["verify"]["outcome"] == "ok" and record["verify"]["files_matched"] == 3
    assert 0 <= record["snapshot_age_s"] < 300
    # The copy holds the primary's snapshot (restic records where it came from) ...
    [primary_snapshot] = box.snapshots()
    [copied] = box.snapshots(copy)
    assert copied["original"] == primary_snapshot["id"]
    assert record["snapshot_ids"] == [copied["short_id"]]
    # ... under its own password, with the primary's chunker (so deduplication carries over).
    assert box.restic("cat", "config", repo=copy, check=False).returncode != 0
    primary_config = json.loads(box.restic("cat", "config").stdout)
    copy_config = json.loads(box.copy_restic(copy, "cat", "config").stdout)
    assert copy_config["chunker_polynomial"] == primary_config["chunker_polynomial"]
    assert record["retention"]["ran"] and record["retention"]["kept"] == 1
    metrics = (box.textfile_dir / "mushishi_backup.prom").read_text()
    assert f'mushishi_backup_copy_outcome{{outcome="ok",repository="{copy}"}} 1.0' in metrics
    assert f'mushishi_backup_copy_verify_ok{{repository="{copy}"}} 1.0' in metrics
    assert f'mushishi_backup_copy_snapshot_age_seconds{{repository="{copy}"}}' in metrics
    assert 'mushishi_backup_outcome{outcome="ok"} 1.0' in metrics
    for text in (result.stdout, result.stderr, (box.state / "last.json").read_text(), metrics):
        assert box.password not in text and box.copy_password not in text


def test_the_copy_is_opened_while_the_primary_backs_up(box: BackupBox) -> None:
    """Opening a copy (creating it the first time) is a restic start of its own, key
    derivation included: it runs beside the sets' backup, not after it. The second run
    opens the copy that exists."""
    populated(box)
    copy = box.add_copy()
    log = timed_restic(box)
    for run in range(2):
        log.write_text("")
        result = box.run()
        assert result.returncode == 0, result.stderr
        assert copy_record(box)["outcome"] == "ok", copy_record(box)
        spans = restic_spans(log, copy)
        [backing_up] = [s for s in spans if s[3] == "backup"]
        [copying] = [s for s in spans if s[3] == "copy"]
        opening = [s for s in spans if s[2] == "copy" and s[1] <= copying[0]]
        assert {s[3] for s in opening} == ({"list", "init"} if run == 0 else {"list"}), spans
        assert min(s[0] for s in opening) < backing_up[1], spans


def test_the_primarys_prune_waits_for_the_copy_and_the_rest_runs_side_by_side(
        box: BackupBox) -> None:
    """`restic copy` holds a lock on the primary while it reads, and `forget --prune` needs
    the primary to itself: the primary's retention starts only once the copy has read. The
    primary's sample is picked while the copy reads; its retention and restore run while
    the copy applies its own retention and restores its sample (each restic start pays its
    key derivation: one after another, they were most of a run's time)."""
    populated(box)
    copy = box.add_copy()
    log = timed_restic(box)
    result = box.run()
    assert result.returncode == 0, result.stderr
    assert box.last()["outcome"] == "ok", box.last()
    spans = restic_spans(log, copy)
    [copying] = [s for s in spans if s[3] == "copy"]
    [pruning] = [s for s in spans if s[2] == "primary" and s[3] == "forget"]
    assert pruning[0] >= copying[1], spans
    after = [s for s in spans if s[0] >= copying[1]]
    primary_side = [s for s in after if s[2] == "primary"]
    copy_side = [s for s in after if s[2] == "copy"]
    # The primary's sample was picked (ls) while the copy read the primary, and is
    # restored after its prune.
    [listing] = [s for s in spans if s[2] == "primary" and s[3] == "ls"]
    assert listing[0] < copying[1], spans
    assert {s[3] for s in primary_side} == {"forget", "restore"}, spans
    # The copy's snapshots are read back by its own forget (--json lists what it kept), and
    # its sample comes from the primary's listing (the copy's snapshot holds the same tree):
    # no listing of its own, only the restore, which reads the copy.
    assert {s[3] for s in copy_side} == {"forget", "restore"}, spans
    assert not [s for s in spans if s[2] == "copy" and s[3] == "ls"], spans
    # Side by side: restic processes of the two chains ran at the same time.
    assert any(a[0] < b[1] and b[0] < a[1] for a in primary_side for b in copy_side), spans


def test_when_the_primarys_listing_fails_the_copy_lists_its_own_sample(
        box: BackupBox) -> None:
    """The copy's sample is picked from the primary's `restic ls`; when that listing fails
    (here a restic that refuses `ls` on the primary), the primary's verification fails and
    says so, and the copy lists its own snapshot instead: still verified from the copy."""
    populated(box)
    copy = box.add_copy()
    refusing_restic(box, box.repo, "ls")
    result = box.run()
    assert result.returncode != 0, result.stderr
    last = box.last()
    assert last["verify"]["outcome"] == "failed", last["verify"]
    assert REFUSED in (last["verify"]["error"] or ""), last["verify"]
    record = copy_record(box)
    assert record["outcome"] == "ok", record
    assert record["verify"]["outcome"] == "ok" and record["verify"]["files_matched"] > 0, record
    [copied] = box.snapshots(copy)
    assert record["snapshot_ids"] == [copied["short_id"]]


def test_without_a_retention_policy_the_copys_snapshots_are_still_read_back(
        box: BackupBox) -> None:
    """Every keep_* 0 (allowed: keep everything): restic's forget then prints nothing at
    all, so the copy's snapshots are listed with `restic snapshots`, not taken as none."""
    populated(box)
    box.extra.update(keep_daily="0", keep_weekly="0", keep_monthly="0")
    copy = box.add_copy(keep_daily=0, keep_weekly=0, keep_monthly=0)
    result = box.run()
    assert result.returncode == 0, result.stderr
    record = copy_record(box)
    assert record["outcome"] == "ok", record
    [copied] = box.snapshots(copy)
    assert record["snapshot_ids"] == [copied["short_id"]]
    assert record["verify"]["outcome"] == "ok"


def test_a_copy_whose_retention_fails_still_has_its_snapshots_read_back(
        box: BackupBox) -> None:
    """The copy's snapshots are normally read back through its own `forget --json`; when
    that fails (here a restic that refuses `forget` on the copy), they are listed with
    `restic snapshots` instead, so the copy is still proven to hold this run's snapshot and
    its sample is still verified: a warning, not a silent gap."""
    populated(box)
    copy = box.add_copy()
    refusing_restic(box, copy, "forget")
    result = box.run()
    record = copy_record(box)
    assert record["outcome"] == "warning", record
    assert REFUSED in (record["retention"]["error"] or ""), record
    [copied] = box.snapshots(copy)
    assert record["snapshot_ids"] == [copied["short_id"]]
    assert record["verify"]["outcome"] == "ok" and record["verified"] is True
    assert result.returncode == 0 or box.last()["outcome"] == "warning", result.stderr


def test_a_malformed_pin_list_is_a_recorded_failure_not_a_crash(box: BackupBox) -> None:
    """The unit's pinned hosts are read when the copies start (a local primary never reads
    them): malformed, the run fails with a line saying what to do, and still leaves its
    result and metrics (once, inside the copies' task group, it was a traceback and no
    last.json)."""
    populated(box)
    box.add_copy()
    box.extra_env["MUSHISHI_PINNED_HOSTS"] = "garbage"
    result = box.run()
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    last = box.last()
    assert last["outcome"] == "failed", last
    assert any("MUSHISHI_PINNED_HOSTS" in e and "mushishi install" in e
               for e in last["errors"]), last["errors"]
    assert (box.textfile_dir / "mushishi_backup.prom").exists()


def test_the_copy_applies_its_own_retention(box: BackupBox) -> None:
    source = populated(box)
    copy = box.add_copy(keep_daily=7, keep_weekly=4, keep_monthly=12)
    # History that only the copy holds (an off-box archive kept longer than the box's own):
    # snapshots of the same host and path, one a month.
    box.copy_restic(copy, "init")
    for month in range(1, 13):
        box.copy_restic(copy, "backup", "--tag", "mushishi", "--time",
                        f"2025-{month:02d}-15 12:00:00", str(source))
    result = box.run()
    assert result.returncode == 0, result.stderr
    record = copy_record(box)
    assert record["outcome"] == "ok", record
    months = sorted(s["time"][:7] for s in box.snapshots(copy))
    this_month = datetime.now(UTC).astimezone().strftime("%Y-%m")
    # keep_daily 7 and keep_weekly 4 fall within these; keep_monthly 12: this month's new
    # snapshot and the newest 11 other months (the primary keeps 3).
    assert months == sorted([this_month, *(f"2025-{m:02d}" for m in range(2, 13))])
    assert record["retention"]["removed"] == 1
    assert len(box.snapshots()) == 1  # the primary's own retention is its own


def test_an_unreachable_copy_fails_the_run_on_its_own_and_the_next_run_catches_up(
        box: BackupBox) -> None:
    source = populated(box)
    offsite = box.root / "offsite"          # its "disk" is not there yet
    copy = box.add_copy("offsite/repo")
    result = box.run()
    assert result.returncode == 4, result.stderr
    last = box.last()
    # The primary's backup is fine and says so; the run's outcome says the copy failed.
    assert last["outcome"] == "copy-failed" and last["exit_status"] == 4
    assert [s["status"] for s in last["sets"]] == ["ok"]
    assert last["verify"]["outcome"] == "ok"
    record = copy_record(box)
    assert record["outcome"] == "failed" and record["verified"] is False
    assert record["snapshot_age_s"] is None
    assert str(offsite) in record["error"]
    assert any("backup.copies[0]" in e and str(copy) in e for e in last["errors"])
    metrics = (box.textfile_dir / "mushishi_backup.prom").read_text()
    assert f'mushishi_backup_copy_outcome{{outcome="failed",repository="{copy}"}} 1.0' \
        in metrics
    assert 'mushishi_backup_outcome{outcome="copy-failed"} 1.0' in metrics

    random_file(source / "second.bin", 50_000)
    assert box.run().returncode == 4
    # Weekly runs of earlier days whose copies failed too (the box's retention keeps one
    # snapshot a day, so today's runs leave one of today's).
    for day in (2, 1):
        when = datetime.fromtimestamp(time.time() - day * 86400).strftime("%Y-%m-%d %H:%M:%S")
        box.restic("backup", "--tag", "mushishi", "--time", when, str(source))
    offsite.mkdir()
    random_file(source / "third.bin", 50_000)
    result = box.run()
    assert result.returncode == 0, result.stderr
    assert box.last()["outcome"] == "ok"
    record = copy_record(box)
    assert record["outcome"] == "ok" and record["verified"] is True
    # The four the box held before its retention (today's older one went at the copy's).
    assert record["snapshots_copied"] == 4 and len(record["copied_from"]) == 4
    # Caught up: every snapshot the box holds, the three the copy missed included.
    primary = {s["short_id"] for s in box.snapshots()}
    assert len(primary) == 3 and originals(box, copy) == primary
    box.restic("check")
    box.copy_restic(copy, "check")
    outcomes = [(h["outcome"], [c["outcome"] for c in h["copies"]]) for h in box.history()]
    assert outcomes == [("copy-failed", ["failed"]), ("copy-failed", ["failed"]),
                        ("ok", ["ok"])]


def test_a_backup_that_wrote_nothing_copies_nothing_and_keeps_the_copys_history(
        box: BackupBox) -> None:
    populated(box)
    box.add_copy()
    assert box.run().returncode == 0
    first = copy_record(box)
    box.sets[0]["path"] = str(box.root / "not-mounted")
    assert box.run().returncode == 1
    record = copy_record(box)
    assert record["outcome"] == "skipped"
    assert record["newest_snapshot_time"] == first["newest_snapshot_time"]
    assert record["last_verified_time"] == first["last_verified_time"]


def test_a_copy_that_cannot_be_opened_fails_even_on_a_run_that_wrote_nothing(
        box: BackupBox) -> None:
    """Copies are opened beside the backup, so a broken copy shows on every run, not only on
    the runs that had something to copy."""
    populated(box)
    offsite = box.root / "offsite"          # its "disk" is not there
    box.add_copy("offsite/repo")
    box.sets[0]["path"] = str(box.root / "not-mounted")
    assert box.run().returncode == 1
    last = box.last()
    assert last["outcome"] == "failed", last
    record = copy_record(box)
    assert record["outcome"] == "failed", record
    assert str(offsite) in record["error"]
    assert record["skipped_reason"] == "no snapshot was written in this run"
    assert any("backup.copies[0]" in e and str(offsite) in e for e in last["errors"]), last


def test_copy_verification_catches_a_corrupted_pack_in_the_copy(box: BackupBox) -> None:
    populated(box)
    copy = box.add_copy()
    assert box.run().returncode == 0
    corrupt_largest_pack(copy)
    # Nothing changed: the copy already holds every blob, so only reading back notices.
    result = box.run()
    assert result.returncode == 4, result.stderr
    last = box.last()
    assert last["verify"]["outcome"] == "ok"   # the primary is intact
    record = copy_record(box)
    assert record["outcome"] == "failed" and record["verified"] is False
    assert record["verify"]["outcome"] == "failed"
    assert f'mushishi_backup_copy_verify_ok{{repository="{copy}"}} 0.0' in (
        box.textfile_dir / "mushishi_backup.prom").read_text()
    check = box.run("check")
    assert check.returncode == 1
    result = box.last("check.json")
    assert result["outcome"] == "ok"  # the primary
    [copy_check] = result["copies"]
    assert copy_check["repository"] == str(copy) and copy_check["outcome"] == "failed"


def test_check_covers_the_primary_and_every_copy(box: BackupBox) -> None:
    populated(box)
    first = box.add_copy("copy-a")
    second = box.add_copy("copy-b", keep_monthly=6)
    assert box.run().returncode == 0
    assert [c["outcome"] for c in box.last()["copies"]] == ["ok", "ok"]
    result = box.run("check")
    assert result.returncode == 0, result.stderr
    check = box.last("check.json")
    assert check["outcome"] == "ok"
    assert [(c["repository"], c["outcome"]) for c in check["copies"]] == [
        (str(first), "ok"), (str(second), "ok")]
    metrics = (box.textfile_dir / "mushishi_backup_check.prom").read_text()
    assert f'mushishi_backup_check_copy_ok{{repository="{second}"}} 1.0' in metrics
