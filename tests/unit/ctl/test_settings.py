"""The operator's commands load the config one way: a config that cannot be used is reported
on stderr with its key, and the command exits 78 (EX_CONFIG) before doing anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from mushishi.ctl import main
from mushishi.ctl.settings import EX_CONFIG, loaded_or_report, settings_or_report

BAD = '[router]\nlisten = ["unix:/run/mushishi/router.sock"]\nno_such_key = 1\n'


def test_a_valid_config_is_loaded_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "mushishi.toml"
    path.write_text("")
    loaded = loaded_or_report(str(path))
    assert loaded is not None and loaded.path == path
    assert settings_or_report(str(path)) == loaded.settings


def test_a_bad_config_is_reported_naming_the_key(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mushishi.toml"
    path.write_text(BAD)
    assert settings_or_report(str(path)) is None
    assert "router.no_such_key" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["audit"], ["bench"], ["backup", "snapshots"],
                                     ["firewall", "render"]])
def test_every_command_that_loads_it_exits_78(tmp_path: Path, command: list[str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mushishi.toml"
    path.write_text(BAD)
    config = ["--config", str(path)]
    argv = [*command, *config] if command[0] != "backup" else ["backup", *config, *command[1:]]
    assert main(argv) == EX_CONFIG
    assert "router.no_such_key" in capsys.readouterr().err
