"""`mushishi firewall render` from the command line (no privileges needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mushishi.ctl import main
from tests.paths import EXAMPLE_CONFIG


def test_render_nft_prints_the_whole_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["firewall", "render", "--config", str(EXAMPLE_CONFIG)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("#!/usr/sbin/nft -f\n")
    assert "table inet mushishi {" in out and str(EXAMPLE_CONFIG) in out


def test_render_ufw_prints_the_script(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["firewall", "render", "--format", "ufw", "--config",
                 str(EXAMPLE_CONFIG)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("#!/bin/sh\n") and "install_block /etc/ufw/after6.rules" in out


def test_invalid_config_exits_78_naming_the_key(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mushishi.toml"
    path.write_text('[firewall.ssh]\nexposure = "everyone"\n')
    assert main(["firewall", "render", "--config", str(path)]) == 78
    assert "firewall.ssh.exposure" in capsys.readouterr().err


def test_unknown_action_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as caught:
        main(["firewall", "open-everything"])
    assert caught.value.code == 2
