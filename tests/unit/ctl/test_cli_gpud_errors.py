"""`mushishi mode`/`hold` errors: one line on stderr naming what to do, a sysexits status."""

from __future__ import annotations

from pathlib import Path

import pytest

from mushishi.ctl.gpud_errors import run_command
from mushishi.shared import dbus_names
from mushishi.shared.bus import BusError
from mushishi.shared.gpumode import GpuModeClient


async def _refused() -> int:
    raise BusError(dbus_names.ERROR_HELD, "mode forensic is held by backup (nightly)")


async def _no_bus(address: str) -> int:
    client = await GpuModeClient.connect(address)
    client.close()
    return 0


async def _answers() -> int:
    return 3


def test_run_command_gpud_refusal_is_one_line_and_75(capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    assert run_command("mode", _refused()) == 75
    assert capsys.readouterr().err == \
        "mushishi mode: mode forensic is held by backup (nightly)\n"


def test_run_command_unreachable_bus_is_69(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert run_command("hold", _no_bus(f"unix:path={tmp_path}/no-bus")) == 69
    err = capsys.readouterr().err
    assert err.startswith("mushishi hold: cannot reach the system bus (")
    assert err.endswith("); is dbus running?\n")


def test_run_command_success_is_the_coroutines_status() -> None:
    assert run_command("mode", _answers()) == 3
