"""The budget ledger when its disk is full: on a real 2 MiB tmpfs that fills up (full_disk.py,
in a mount namespace of its own; needs root, as the soak's ledger fault does)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def run(scenario: str, directory: Path) -> dict:
    done = subprocess.run(["unshare", "-m", sys.executable, "-m", "tests.unit.egress.full_disk",
                           scenario, str(directory)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_settle_the_full_disk_refused_lands_once_the_disk_has_room(tmp_path: Path) -> None:
    seen = run("settle", tmp_path / "ledger")
    assert "full" in seen["first"], seen  # the answer is not held until the disk has room
    assert seen["full"] == {"usage": [], "reservations": 1}
    # The provider counted 11+7 tokens: the ledger says so once it can write, in flight none.
    assert seen["later"] == {"usage": [[1, 11, 7]], "reservations": 0}


def test_a_ledger_on_a_full_disk_opens_refusing_writes_until_it_has_room(
    tmp_path: Path,
) -> None:
    seen = run("start", tmp_path / "ledger")
    assert seen["opened"] == "opened", seen  # was: LedgerError ... database or disk is full
    assert seen["writable"] is False
    path = str(tmp_path / "ledger" / "ledger.sqlite3")
    assert path in seen["reserve"] and "free space" in seen["reserve"], seen
    assert path in seen["unavailable"]
    assert seen["writable_later"] is True
    assert seen["totals"] == 1  # the crashed run's reservation, counted from its estimate
    assert seen["later"] == {"usage": [[1, 10, 0]], "reservations": 1}


def test_the_egress_starts_on_a_full_ledger_disk_and_recovers(tmp_path: Path) -> None:
    seen = run("egress-start", tmp_path / "ledger")
    assert seen["started"] and seen["ready"] is False, seen
    assert "cannot be written: cloud requests refused" in seen["status"]
    assert seen["ready_later"] is True
    assert seen["later"] == {"usage": [[1, 10, 0]], "reservations": 0}
