"""`mushishi install` renders the floor's RequiresMountsFor= from [cpu_floor]."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.paths import BINDIR, EXAMPLE_CONFIG

DROPIN = "etc/systemd/system/mushishi-cpu-floor.service.d/paths.conf"


def install(root: Path, config: Path) -> None:
    subprocess.run([f"{BINDIR}/mushishi", "install", "--root", str(root), "--config",
                    str(config)], capture_output=True, text=True, check=True)


def test_floor_waits_for_the_mounts_of_its_model_and_binary(tmp_path: Path) -> None:
    install(tmp_path, EXAMPLE_CONFIG)
    text = (tmp_path / DROPIN).read_text()
    assert text.splitlines()[1:] == [
        "[Unit]", "RequiresMountsFor=/data/ai/02-models/nemotron-cpu /usr/local/bin"]


def test_paths_with_spaces_and_percent_signs_stay_one_word_each(tmp_path: Path) -> None:
    config = tmp_path / "mushishi.toml"
    config.write_text(EXAMPLE_CONFIG.read_text().replace(
        'model = "/data/ai/02-models/nemotron-cpu/model.gguf"',
        'model = "/data/my models/100%/m.gguf"'))
    install(tmp_path / "root", config)
    text = (tmp_path / "root" / DROPIN).read_text()
    assert 'RequiresMountsFor="/data/my models/100%%" /usr/local/bin' in text
