"""mushishi-backup end to end with the real restic: init, backup, retention over backdated
snapshots, restore verification that catches a corrupted pack, stale and live locks,
SIGTERM mid-backup, missing paths, partial backups (exit 3), the monthly check.
Bare restic is the oracle for what is in the repository.
"""

from __future__ import annotations

import os
import signal
import stat
import time
from datetime import datetime
from pathlib import Path

from tests.integration.backup.conftest import (
    BackupBox,
    random_file,
    restic_spans,
    timed_restic,
)


def populated(box: BackupBox) -> Path:
    source = box.source("outputs")
    random_file(source / "report.bin", 300_000)
    (source / "notes.txt").write_text("client notes\n")
    (source / "sub").mkdir()
    (source / "sub" / "config.yml").write_text("a: 1\n")
    (source / "pgdata").mkdir()
    (source / "pgdata" / "big.db").write_text("excluded\n")
    box.add_set(source, "forensic reports delivered to clients",
                exclude=[str(source / "pgdata")])
    return source


def test_first_run_initialises_backs_up_verifies_and_records(box: BackupBox) -> None:
    source = populated(box)
    result = box.run()
    assert result.returncode == 0, result.stderr
    last = box.last()
    assert last["outcome"] == "ok" and last["exit_status"] == 0
    assert last["warnings"] == [] and last["errors"] == []
    [snapshot] = box.snapshots()
    assert last["snapshot_ids"] == [snapshot["short_id"]]
    assert snapshot["paths"] == [str(source)] and snapshot["tags"] == ["mushishi"]
    assert last["files_new"] == 3 and last["bytes_added"] > 300_000
    # The exclude held: pgdata is not in the snapshot.
    listing = box.restic("ls", snapshot["short_id"]).stdout
    assert "report.bin" in listing and "pgdata" not in listing
    assert last["verify"]["outcome"] == "ok" and last["verify"]["files_matched"] == 3
    assert last["retention"]["ran"] and last["retention"]["kept"] == 1
    assert [h["kind"] for h in box.history()] == ["backup"]
    # The repository is readable by the runner's group (the watchdog reads snapshots).
    assert box.repo.joinpath("config").stat().st_mode & stat.S_IRGRP
    metrics = (box.textfile_dir / "mushishi_backup.prom").read_text()
    assert 'mushishi_backup_outcome{outcome="ok"} 1.0' in metrics
    assert f'mushishi_backup_set_ok{{path="{source}"}} 1.0' in metrics
    assert "mushishi_backup_verify_ok 1.0" in metrics
    # The password is in no log line, result or metric.
    for text in (result.stdout, result.stderr, (box.state / "last.json").read_text(),
                 (box.state / "history.jsonl").read_text(), metrics):
        assert box.password not in text


def test_missing_path_is_a_warning_in_the_result_not_a_silent_skip(box: BackupBox) -> None:
    populated(box)
    gone = box.root / "src" / "never-mounted"
    box.add_set(gone, "hand-written configs")
    result = box.run()
    assert result.returncode == 0, result.stderr
    last = box.last()
    assert last["outcome"] == "warning"
    missing = next(s for s in last["sets"] if s["path"] == str(gone))
    assert missing["status"] == "missing"
    assert any(str(gone) in w and "hand-written configs" in w for w in last["warnings"])
    assert f"{gone} does not exist" in result.stderr
    assert len(box.snapshots()) == 1  # the present set was still backed up


def test_only_missing_paths_is_a_failure(box: BackupBox) -> None:
    box.add_set(box.root / "nothing-here", "configs")
    result = box.run()
    assert result.returncode == 1
    assert box.last()["outcome"] == "failed"
    assert box.last()["retention"]["skipped_reason"] == "no snapshot was written in this run"


def test_unreadable_file_is_a_partial_backup_never_success(box: BackupBox) -> None:
    source = box.source("shared")
    (source / "ok.txt").write_text("readable\n")
    secret = source / "secret.txt"
    secret.write_text("unreadable by the runner\n")
    for path in (box.root, box.root / "src", source, source / "ok.txt"):
        os.chown(path, 65534, 65534)
    secret.chmod(0)
    box.add_set(source, "shared notes")
    # As `nobody`, secret.txt cannot be read: restic writes a snapshot and exits 3.
    result = box.run(user="65534")
    assert result.returncode == 3, result.stderr
    last = box.last()
    assert last["outcome"] == "partial"
    [item] = last["sets"]
    assert item["status"] == "partial" and item["snapshot_id"]
    assert item["unreadable"] == [f"{secret}: Permission denied"]
    assert "restic exit 3" in item["error"]
    assert 'mushishi_backup_outcome{outcome="partial"} 1.0' in (
        box.textfile_dir / "mushishi_backup.prom").read_text()


def test_retention_keeps_7_daily_4_weekly_3_monthly_over_backdated_snapshots(
        box: BackupBox) -> None:
    source = box.source("configs")
    (source / "compose.yml").write_text("services: {}\n")
    box.add_set(source, "hand-written configs")
    box.restic("init")
    backdated = ["2025-01-05", "2025-01-20", "2025-02-03", "2025-02-10", "2025-03-02",
                 "2025-03-20", "2025-04-08", "2025-04-15",
                 *(f"2025-04-{day}" for day in range(21, 31))]
    for day in backdated:
        box.restic("backup", "--tag", "mushishi", "--time", f"{day} 12:00:00", str(source))
    # Someone else's snapshot in the same repository: retention must not touch it.
    box.restic("backup", "--tag", "foreign", "--time", "2025-01-01 12:00:00", str(source))
    result = box.run()
    assert result.returncode == 0, result.stderr
    last = box.last()
    assert last["outcome"] == "ok"
    remaining = {s["time"][:10] for s in box.snapshots()}
    today = datetime.now().astimezone().date().isoformat()
    # The run's own snapshot takes one daily, one weekly and one monthly slot; then:
    # daily 6 more days: Apr 25-30; weekly 3 more ISO weeks: 18 (Apr 30), 17 (Apr 27),
    # 16 (Apr 15); monthly 2 more months: April (Apr 30), March (Mar 20).
    expected = {today, "2025-04-25", "2025-04-26", "2025-04-27", "2025-04-28", "2025-04-29",
                "2025-04-30", "2025-04-15", "2025-03-20", "2025-01-01"}
    assert remaining == expected
    assert (last["retention"]["kept"], last["retention"]["removed"]) == (9, 10)
    box.restic("check")  # pruned, and consistent


def corrupt_largest_pack(repo: Path) -> Path:
    packs = sorted((p for p in (repo / "data").rglob("*") if p.is_file()),
                   key=lambda p: p.stat().st_size)
    pack = packs[-1]
    pack.chmod(0o644)
    data = bytearray(pack.read_bytes())
    for offset in range(1000, len(data) - 1000, 4096):
        data[offset] ^= 0xFF
    pack.write_bytes(bytes(data))
    return pack


def test_restore_verification_catches_a_corrupted_pack(box: BackupBox) -> None:
    populated(box)
    assert box.run().returncode == 0
    corrupt_largest_pack(box.repo)
    # The next backup reuses the stored blobs (nothing changed), so only reading them back
    # can notice the damage.
    result = box.run()
    assert result.returncode == 2, result.stderr
    last = box.last()
    assert last["outcome"] == "ok"  # the snapshot itself was written
    verify = last["verify"]
    assert verify["outcome"] == "failed"
    assert "restic restore" in verify["error"]
    assert any("report.bin" in m for m in verify["mismatches"])
    assert "mushishi_backup_verify_ok 0.0" in (
        box.textfile_dir / "mushishi_backup.prom").read_text()
    # And the monthly check, reading all data back, reports it too.
    check = box.run("check")
    assert check.returncode == 1
    assert box.last("check.json")["outcome"] == "failed"


def test_check_passes_on_a_healthy_repository_and_records_it(box: BackupBox) -> None:
    populated(box)
    assert box.run().returncode == 0
    result = box.run("check")
    assert result.returncode == 0, result.stderr
    check = box.last("check.json")
    assert check["outcome"] == "ok" and check["read_data_subset"] == "100%"
    assert "mushishi_backup_check_ok 1.0" in (
        box.textfile_dir / "mushishi_backup_check.prom").read_text()
    assert [h["kind"] for h in box.history()] == ["backup", "check"]


def test_check_never_creates_a_repository(box: BackupBox) -> None:
    populated(box)
    result = box.run("check")
    assert result.returncode == 1
    assert "`mushishi-backup run` creates it" in box.last("check.json")["error"]
    assert not (box.repo / "config").exists()


def test_stale_lock_of_a_killed_restic_is_cleared_and_the_run_succeeds(box: BackupBox) -> None:
    source = populated(box)
    random_file(source / "large.bin", 4_000_000)
    box.restic("init")
    killed = box.restic_popen("--limit-upload", "64", "backup", str(source))
    lock = box.wait_for_lock()
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    assert box.locks() == [lock]  # a killed restic leaves its lock behind
    result = box.run()
    assert result.returncode == 0, result.stderr
    last = box.last()
    assert last["outcome"] == "warning"
    [cleared] = last["stale_locks_cleared"]
    assert cleared.startswith(f"lock {lock[:8]} of PID {killed.pid} on ")
    assert any("cleared stale lock" in w for w in last["warnings"])
    assert last["sets"][0]["status"] == "ok" and last["verify"]["outcome"] == "ok"
    assert box.locks() == []
    box.restic("check")


def test_an_unlocked_local_repository_is_backed_up_without_a_probe_first(
        box: BackupBox) -> None:
    """Listing a repository's locks opens it (a restic start, its key derivation) to find
    stale ones to clear. A local repository whose `locks/` holds no file has none, so the
    run starts with the backup itself; the first run (no repository) still probes and
    creates it, and a repository holding a lock file is still probed (tests above)."""
    populated(box)
    log = timed_restic(box)
    for run in range(2):
        log.write_text("")
        result = box.run()
        assert result.returncode == 0, result.stderr
        assert box.last()["outcome"] == "ok", box.last()
        commands = [span[3] for span in restic_spans(log)]
        if run == 0:
            assert commands[0] == "list" and commands.count("init") == 1, commands
        else:
            assert commands[0] == "backup", commands
            assert "list" not in commands, commands


def test_wrong_password_on_an_unlocked_repository_still_names_the_credential(
        box: BackupBox) -> None:
    """Without the probe, the backup is the first to try the password: its failure is
    diagnosed by opening the repository, and the run fails with the same line as when the
    probe finds it (`test_wrong_password_fails_clearly_and_never_reinitialises`)."""
    populated(box)
    assert box.run().returncode == 0
    snapshots = box.snapshots()
    result = box.run(password="not the password")
    assert result.returncode == 1
    last = box.last()
    assert last["outcome"] == "failed"
    assert ("the password in credential 'restic-password' does not open the repository"
            in last["errors"][0]), last["errors"]
    assert len(last["errors"]) == 1, last["errors"]
    assert box.snapshots() == snapshots
    assert "not the password" not in result.stderr + (box.state / "last.json").read_text()


def test_live_lock_is_left_alone(box: BackupBox) -> None:
    source = populated(box)
    other_source = box.source("other")
    random_file(other_source / "slow.bin", 4_000_000)
    box.restic("init")
    live = box.restic_popen("--limit-upload", "32", "backup", str(other_source))
    try:
        lock = box.wait_for_lock()
        result = box.run()
        assert result.returncode == 0, result.stderr
        last = box.last()
        # Our backup ran beside the live one (both take shared locks); prune, which needs
        # the repository to itself, was refused and is a warning, never a forced unlock.
        assert last["stale_locks_cleared"] == []
        assert last["sets"][0]["status"] == "ok"
        assert "already locked" in (last["retention"]["error"] or "")
        assert last["outcome"] == "warning"
        assert lock in box.locks() and live.poll() is None
        assert "left alone" in result.stderr
    finally:
        live.send_signal(signal.SIGINT)
        live.wait(timeout=60)
    assert source.is_dir()


def test_sigterm_mid_backup_leaves_the_repository_consistent_and_the_next_run_succeeds(
        box: BackupBox) -> None:
    source = populated(box)
    random_file(source / "large.bin", 6_000_000)
    box.extra["limit_upload_kib"] = "256"  # about 25 s of upload: plenty to interrupt
    runner = box.popen()
    try:
        box.wait_for_lock()
        time.sleep(1.0)  # restic is now uploading packs
        runner.send_signal(signal.SIGTERM)
        _, stderr = runner.communicate(timeout=120)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode == 143, stderr
    last = box.last()
    assert last["outcome"] == "interrupted" and last["exit_status"] == 143
    assert any("interrupted" in e for e in last["errors"])
    assert last["retention"]["skipped_reason"] == "the run was interrupted"
    assert box.locks() == []           # restic got SIGINT and released its lock
    assert box.snapshots() == []       # no half snapshot
    box.restic("check")                # consistent
    del box.extra["limit_upload_kib"]
    result = box.run()
    assert result.returncode == 0, result.stderr
    assert box.last()["outcome"] == "ok"
    assert box.last()["verify"]["outcome"] == "ok"
    assert len(box.snapshots()) == 1
    assert [h["outcome"] for h in box.history()] == ["interrupted", "ok"]


def test_wrong_password_fails_clearly_and_never_reinitialises(box: BackupBox) -> None:
    populated(box)
    box.restic("init")
    config_before = (box.repo / "config").read_bytes()
    result = box.run(password="not the password")
    assert result.returncode == 1
    last = box.last()
    assert last["outcome"] == "failed"
    assert ("the password in credential 'restic-password' does not open the repository"
            in last["errors"][0])
    assert (box.repo / "config").read_bytes() == config_before
    assert "not the password" not in result.stderr + (box.state / "last.json").read_text()


def test_missing_restic_binary_names_the_key_and_the_fix(box: BackupBox) -> None:
    populated(box)
    box.restic_binary = "/opt/nowhere/restic"
    result = box.run()
    assert result.returncode == 1
    error = box.last()["errors"][0]
    assert "restic not found at /opt/nowhere/restic" in error
    assert "backup.restic" in error and "mushishi install" in error
