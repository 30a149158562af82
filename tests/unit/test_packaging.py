"""The installed distribution: one `mushishi` namespace and a script per daemon."""

from __future__ import annotations

import subprocess
from importlib.metadata import distribution

import pytest

from tests.paths import BINDIR, EXAMPLE_CONFIG

DAEMONS = ["router", "egress", "gpud", "cpu-floor", "tenant", "watchdog", "alert", "backup"]


def test_only_the_mushishi_namespace_is_importable_from_the_distribution() -> None:
    entry_modules = {ep.value.split(":")[0] for ep in distribution("mushishi").entry_points}
    assert all(module.startswith("mushishi.") for module in entry_modules)
    for forbidden in ("services", "shared", "ctl", "firewall", "units", "devtools"):
        result = subprocess.run([f"{BINDIR}/python", "-c", f"import {forbidden}"],
                                capture_output=True, text=True, cwd="/")
        assert result.returncode != 0, f"a top-level {forbidden!r} module is installed"


@pytest.mark.parametrize("daemon", DAEMONS)
def test_every_daemon_script_accepts_config(daemon: str) -> None:
    result = subprocess.run([f"{BINDIR}/mushishi-{daemon}", "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 0
    assert "--config PATH" in result.stdout


def test_daemon_refuses_invalid_config_with_exit_78(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE_CONFIG.read_text() + "\n[router]\nlistne = []\n")
    result = subprocess.run([f"{BINDIR}/mushishi-watchdog", "--config", str(bad)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode in (1, 78)
