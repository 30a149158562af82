"""The state directory: atomic files, the pending record, last.json."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from mushishi.firewall.state import Pending, StateDir, iso, sha256


def test_pending_round_trips_and_files_are_private(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "firewall")
    assert state.pending() is None and state.last() is None
    pending = Pending("t0k3n", 100.0, 160.0, 4242, sha256("ruleset"))
    state.set_pending(pending)
    assert state.pending() == pending
    assert stat.S_IMODE((state.path / "pending.json").stat().st_mode) == 0o640
    assert stat.S_IMODE(state.path.stat().st_mode) == 0o750
    state.remove("pending.json")
    assert state.pending() is None
    assert not list(state.path.glob(".*"))  # no temporary file left behind


def test_record_writes_last_json_in_utc(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.record(0.0, "rolled-back", "not confirmed before the deadline", "ab" * 32)
    assert json.loads((tmp_path / "last.json").read_text()) == {
        "time": "1970-01-01T00:00:00+00:00", "action": "rolled-back",
        "detail": "not confirmed before the deadline", "sha256": "ab" * 32}
    assert iso(86400.5) == "1970-01-02T00:00:00+00:00"


def test_lock_is_reentrant_across_instances_in_sequence(tmp_path: Path) -> None:
    first, second = StateDir(tmp_path), StateDir(tmp_path)
    with first.locked():
        first.write("applied.nft", "a")
    with second.locked():
        assert second.read("applied.nft") == "a"
