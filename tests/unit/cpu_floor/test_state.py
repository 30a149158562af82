"""The restart history file: atomic, tolerant of damage, never fatal."""

from __future__ import annotations

from pathlib import Path

from mushishi.services.cpu_floor import core
from mushishi.services.cpu_floor.state import HistoryStore, state_directory


def test_history_round_trips_through_the_file(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path)
    history = core.record_stop(core.mark_ready(core.History(), 10.0), "watchdog", 70.0)
    assert store.save(history)
    assert HistoryStore(tmp_path).load() == history
    assert [p.name for p in tmp_path.iterdir()] == ["restarts.json"]  # no temporary left


def test_corrupt_history_reads_as_empty(tmp_path: Path, caplog) -> None:
    (tmp_path / "restarts.json").write_text("{not json")
    assert HistoryStore(tmp_path).load() == core.History()
    assert "ignoring unreadable restart history" in caplog.text


def test_unwritable_history_is_a_warning_not_a_crash(tmp_path: Path, caplog) -> None:
    store = HistoryStore(tmp_path / "missing-directory")
    assert store.save(core.History()) is False
    assert "cannot record the restart history" in caplog.text


def test_state_directory_comes_from_systemd() -> None:
    assert state_directory({"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}) == Path("/var/lib/a")
    assert state_directory({}) is None
