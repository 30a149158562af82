"""The firewall's node_exporter textfile, from the state directory."""

from __future__ import annotations

from pathlib import Path

from mushishi.firewall.metrics import export, render_textfile
from mushishi.firewall.state import Pending, StateDir


def test_textfile_reports_pending_and_the_last_action(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.set_pending(Pending("t", 100.0, 160.0, 1, "ab"))
    state.record(100.0, "applied", "waiting", "ab")
    text = render_textfile(state, str(tmp_path / "textfile")).read_text()
    assert "mushishi_firewall_pending_confirmation 1.0" in text
    assert "mushishi_firewall_pending_deadline_timestamp_seconds 160.0" in text
    assert "mushishi_firewall_last_change_timestamp_seconds 100.0" in text
    assert 'mushishi_firewall_last_change_action{action="applied"} 1.0' in text
    assert 'mushishi_firewall_last_change_action{action="rolled-back"} 0.0' in text
    assert "mushishi_firewall_confirmed_ruleset 0.0" in text
    assert 'mushishi_build_info{daemon="firewall"' in text


def test_unwritable_textfile_dir_never_fails_a_change(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    export(StateDir(tmp_path / "state"), str(blocker / "sub"))  # logs, does not raise
    export(StateDir(tmp_path / "state"), None)
