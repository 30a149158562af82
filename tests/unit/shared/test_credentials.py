"""Secrets come from systemd credentials first, then development variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from mushishi.shared.credentials import find_credential, read_credential


def test_systemd_credential_wins_over_environment(tmp_path: Path) -> None:
    (tmp_path / "ngc-api-key").write_text("from-systemd\n")
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path),
               "MUSHISHI_CREDENTIAL_NGC_API_KEY": "from-env"}
    found = find_credential("ngc-api-key", environ=environ)
    assert found is not None
    assert (found.value, found.source) == ("from-systemd", "credential")
    assert found.path == tmp_path / "ngc-api-key"  # what restic's --password-file is given
    assert "from-systemd" not in repr(found)


def test_environment_then_dotenv() -> None:
    assert find_credential("x", environ={"MUSHISHI_CREDENTIAL_X": "e"}).source == "env"
    found = find_credential("x", environ={}, dotenv={"MUSHISHI_CREDENTIAL_X": "d"})
    assert found is not None and (found.value, found.source) == ("d", ".env")
    assert found.path is None  # no file: the value itself is passed on


def test_missing_credential_names_both_ways_to_provide_it() -> None:
    with pytest.raises(LookupError) as caught:
        read_credential("restic-password", environ={})
    message = str(caught.value)
    assert "LoadCredential=restic-password:" in message
    assert "MUSHISHI_CREDENTIAL_RESTIC_PASSWORD" in message
