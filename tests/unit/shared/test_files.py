"""replace_atomically: the new text under the old name, the mode asked for, nothing left over."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from mushishi.shared.files import replace_atomically


def test_replace_atomically_new_file_has_text_and_private_mode(tmp_path: Path) -> None:
    target = tmp_path / "last.json"
    replace_atomically(target, '{"outcome": "ok"}\n')
    assert target.read_text() == '{"outcome": "ok"}\n'
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["last.json"]


def test_replace_atomically_existing_file_is_replaced_not_rewritten(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    reader = target.open()  # a reader holding the old file keeps reading the old text
    before = target.stat().st_ino
    replace_atomically(target, "new ✓", 0o640)
    assert reader.read() == "old"
    reader.close()
    assert target.read_text(encoding="utf-8") == "new ✓"
    assert target.stat().st_ino != before
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_replace_atomically_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        replace_atomically(tmp_path / "absent" / "x.json", "{}")
