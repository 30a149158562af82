"""replace_atomically: the new text under the old name, the mode asked for, nothing left over;
JSON files written through it and read back, tolerant or saying what is wrong."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

from mushishi.shared.files import (
    JsonFileError,
    load_json_object,
    read_json,
    replace_atomically,
    write_json,
)


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


def test_write_json_for_people_is_indented_sorted_and_ends_in_a_newline(tmp_path: Path) -> None:
    target = tmp_path / "last.json"
    write_json(target, {"outcome": "ok", "errors": []}, 0o640, pretty=True)
    assert target.read_text() == '{\n  "errors": [],\n  "outcome": "ok"\n}\n'
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["last.json"]


def test_write_json_compact_is_one_line_in_key_order(tmp_path: Path) -> None:
    target = tmp_path / "restarts.json"
    write_json(target, {"z": 1, "a": [1, 2]})
    assert target.read_text() == '{"z": 1, "a": [1, 2]}'
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert read_json(target) == {"z": 1, "a": [1, 2]}


def test_read_json_absent_corrupt_or_not_an_object_is_none(tmp_path: Path) -> None:
    assert read_json(tmp_path / "absent.json") is None
    (tmp_path / "corrupt.json").write_text("{not json")
    assert read_json(tmp_path / "corrupt.json") is None
    (tmp_path / "list.json").write_text("[1, 2]")
    assert read_json(tmp_path / "list.json") is None
    assert read_json(tmp_path) is None  # a directory: IsADirectoryError


def test_load_json_object_names_the_file_and_keeps_the_cause(tmp_path: Path) -> None:
    assert load_json_object(tmp_path / "absent.json") is None
    (tmp_path / "corrupt.json").write_text("{not json")
    expected = "^" + re.escape(f"cannot read {tmp_path}/corrupt.json: ")
    with pytest.raises(JsonFileError, match=expected) as bad:
        load_json_object(tmp_path / "corrupt.json")
    assert isinstance(bad.value.cause, json.JSONDecodeError)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(JsonFileError, match=r"list\.json does not hold a JSON object$") as other:
        load_json_object(tmp_path / "list.json")
    assert other.value.cause is None
    (tmp_path / "ok.json").write_text(json.dumps({"outcome": "ok"}))
    assert load_json_object(tmp_path / "ok.json") == {"outcome": "ok"}


def test_load_json_object_unreadable_path_carries_the_os_error(tmp_path: Path) -> None:
    with pytest.raises(JsonFileError, match="^" + re.escape(f"cannot read {tmp_path}: ")) as raised:
        load_json_object(tmp_path)  # a directory: read_text raises IsADirectoryError
    assert isinstance(raised.value.cause, IsADirectoryError)
