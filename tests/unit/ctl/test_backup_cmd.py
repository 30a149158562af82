"""`mushishi backup --from`: the box's repository or one of its copies, as configured."""

from __future__ import annotations

from pathlib import Path

import pytest

from mushishi.ctl.backup_cmd import choose
from mushishi.shared.config import load_settings


def test_from_names_the_primary_or_a_copy_as_configured(tmp_path: Path) -> None:
    config = tmp_path / "mushishi.toml"
    config.write_text('[backup]\nrepository = "/data/repo"\n'
                      '[[backup.copies]]\nrepository = "/mnt/usb/restic"\n'
                      '[[backup.copies]]\nrepository = "rest:https://u:pw@rest.example/box/"\n')
    backup = load_settings(config).backup
    assert choose(backup, None) is None and choose(backup, "/data/repo") is None
    assert choose(backup, "/mnt/usb/restic") == 0
    # As status and last.json show it, without the password, works too.
    assert choose(backup, "rest:https://u:***@rest.example/box/") == 1
    with pytest.raises(ValueError, match="they are: /data/repo, /mnt/usb/restic, "
                       r"rest:https://u:\*\*\*@rest.example/box/"):
        choose(backup, "/mnt/other")
