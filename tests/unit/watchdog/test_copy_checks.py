"""The watchdog's check of each off-box copy, from the backup's last.json: stale, failed or
never copied is a problem; the detail says the copy's age and its last verification."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mushishi.services.watchdog import checks
from mushishi.services.watchdog.app import copy_checks
from mushishi.services.watchdog.checks import Status
from mushishi.shared.config import load_settings
from mushishi.shared.readings import Reading, error, missing, ok

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
REPOSITORY = "sftp:backup@offsite.example:/srv/restic/mushishi"


def last(**copy: Any) -> dict[str, Any]:
    entry = {"repository": REPOSITORY, "outcome": "ok", "verified": True,
             "newest_snapshot_time": (NOW - timedelta(hours=3)).isoformat(),
             "last_verified_time": (NOW - timedelta(hours=3)).isoformat(), "error": None,
             "verify": {"outcome": "ok", "error": None, "mismatches": []}}
    entry.update(copy)
    return {"finished": (NOW - timedelta(hours=3)).isoformat(), "copies": [entry]}


def check(record: object, max_age_days: float = 8) -> checks.CheckResult:
    reading = record if isinstance(record, Reading) else ok(record)
    return checks.backup_copy(REPOSITORY, reading, now=NOW,
                              max_age_days=max_age_days,
                              limit_key="watchdog.copy_max_age_days")


def test_a_fresh_verified_copy_is_ok_and_says_its_age_and_last_verification() -> None:
    result = check(last())
    assert result.name == f"backup-copy:{REPOSITORY}" and result.status is Status.OK
    assert result.detail == ("newest snapshot is 3.0 hours old, restore sample verified "
                             "3.0 hours ago (last copy ok)")


@pytest.mark.parametrize(("record", "expected"), [
    (last(newest_snapshot_time=(NOW - timedelta(days=9)).isoformat()),
     "newest snapshot is 9.0 days old (from 2026-03-01T12:00+00:00; limit 8 days, "
     "watchdog.copy_max_age_days)"),
    (last(outcome="failed", verified=False, error="restic copy to sftp:… exited 1: EOF"),
     "the last copy at 2026-03-10T09:00:00+00:00 failed: restic copy to sftp:… exited 1: EOF"),
    (last(outcome="failed", verified=False,
          verify={"outcome": "failed", "error": None, "mismatches": ["/a: SHA-256 differs"]}),
     "failed: /a: SHA-256 differs"),
    (last(outcome="failed", newest_snapshot_time=None, last_verified_time=None,
          error="backup.copies[0].repository: offsite.example now resolves to 203.0.113.2"),
     "the copy holds no snapshot of this box yet; the last copy at"),
])
def test_a_stale_or_failed_copy_is_a_problem_naming_why(record: dict[str, Any],
                                                         expected: str) -> None:
    result = check(record)
    assert result.status is Status.PROBLEM
    assert expected in result.detail, result.detail


def test_a_copy_with_no_entry_yet_or_no_result_file_is_not_called_healthy() -> None:
    assert check({"copies": []}).status is Status.MISSING_SOURCE
    assert check(missing("no backup has run yet")).status is Status.MISSING_SOURCE
    assert check(error("cannot read last.json")).status is Status.PROBLEM


def test_the_limit_is_copy_max_age_days_else_backup_max_age_days(tmp_path: Path) -> None:
    config = tmp_path / "mushishi.toml"
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("x\n")
    copies = (f'[[backup.copies]]\nrepository = "{REPOSITORY}"\nknown_hosts = '
              f'"{known_hosts}"\nssh_key_credential = "k"\n'
              '[[backup.copies]]\nrepository = "rest:https://u:pw@rest.example/box"\n')
    record = last(newest_snapshot_time=(NOW - timedelta(days=3)).isoformat())
    config.write_text("[watchdog]\nbackup_max_age_days = 2\n" + copies)
    stale, never = copy_checks(load_settings(config), ok(record), NOW)
    assert stale.status is Status.PROBLEM and "watchdog.backup_max_age_days" in stale.detail
    # The password in a rest: URL is never in a check's name.
    assert never.name == "backup-copy:rest:https://u:***@rest.example/box"
    assert never.status is Status.MISSING_SOURCE
    config.write_text("[watchdog]\nbackup_max_age_days = 2\ncopy_max_age_days = 4\n" + copies)
    fresh, _ = copy_checks(load_settings(config), ok(record), NOW)
    assert fresh.status is Status.OK
