"""`mushishi status`: one row per off-box copy, its age and last verification; a failed copy
is a problem even when the box's own backup is fine."""

from __future__ import annotations

from datetime import timedelta

from mushishi.ctl.status.report import build_report
from mushishi.ctl.status.screen import render
from mushishi.shared.readings import ok
from tests.unit.ctl.test_status_core import BACKUP, NOW, everything, iso

REPOSITORY = "sftp:backup@offsite.example:/srv/restic/mushishi"


def with_copies(*copies: dict[str, object]) -> dict[str, object]:
    last = dict(BACKUP["last"], copies=list(copies))
    return {"last": last, "check": BACKUP["check"]}


def test_each_copy_shows_its_age_and_last_verification() -> None:
    readings = everything()
    readings["backup"] = ok(with_copies(
        {"repository": REPOSITORY, "outcome": "ok", "verified": True,
         "newest_snapshot_time": iso(timedelta(days=-2, minutes=-2)),
         "last_verified_time": iso(timedelta(days=-2)), "error": None},
        {"repository": "/mnt/usb/restic", "outcome": "failed", "verified": False,
         "newest_snapshot_time": iso(timedelta(days=-9)), "last_verified_time": None,
         "error": "the parent of the repository /mnt/usb/restic (backup.copies[1].repository) "
                  "does not exist: is its disk mounted?"}))
    report = build_report(readings, NOW, "box")
    screen = render(report)
    rows = [line for line in screen.splitlines() if line.startswith("copy ")]
    assert rows == [
        f"copy      {REPOSITORY}: ok 2 d ago, newest snapshot 2 d old, verified 2 d ago",
        "copy      /mnt/usb/restic: failed 2 d ago, newest snapshot 9 d old, never verified — "
        "the parent of the repository /mnt/usb/restic (backup.copies[1].repository) does "
        "not exist: is its disk mounted?"], screen
    assert "copy to /mnt/usb/restic failed" in report.problems
    assert f"copy to {REPOSITORY} failed" not in report.problems
    [first, _] = report.data["backup"]["copies"]
    assert first["newest_snapshot_age_s"] == 2 * 86400 + 120 and first["verified"] is True


def test_a_box_without_copies_shows_no_copy_row() -> None:
    report = build_report(everything(), NOW, "box")
    assert report.data["backup"]["copies"] == []
    assert not [line for line in render(report).splitlines() if line.startswith("copy")]
