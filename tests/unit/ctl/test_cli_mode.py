"""gpud's errors as `mushishi mode`/`hold` explain them, and `mushishi mode`'s view."""

from __future__ import annotations

import pytest

from mushishi.ctl.gpud_errors import describe_error
from mushishi.ctl.mode_cmd import render
from mushishi.shared import dbus_names
from mushishi.shared.bus import BusError
from mushishi.shared.gpumode import GpuModeProperties


@pytest.mark.parametrize(("name", "status", "says"), [
    ("org.freedesktop.DBus.Error.AccessDenied", 77, "only root and members of group mushishi"),
    ("org.freedesktop.DBus.Error.ServiceUnknown", 69, "mushishi-gpud is not running"),
    (dbus_names.ERROR_BUSY, 75, "the text"),
    (dbus_names.ERROR_HELD, 75, "the text"),
    (dbus_names.ERROR_UNKNOWN_MODE, 64, "the text"),
    (dbus_names.ERROR_SWITCH_FAILED, 1, "the text"),
])
def test_describe_error_names_the_fix_and_a_sysexits_status(name: str, status: int,
                                                            says: str) -> None:
    message, code = describe_error(BusError(name, "the text"))
    assert code == status and says in message


def test_render_shows_mode_holds_and_gpu() -> None:
    text = render(GpuModeProperties.from_dbus({
        "ActiveMode": "forensic", "State": "ready", "StateReason": "", "Progress": "",
        "Modes": ["agent", "forensic", "off"],
        "Holds": [["forensic", "mushishi hold: ./report.sh", "client job"]],
        "VramUsedMiB": 28500, "VramTotalMiB": 32607, "GpuUtilPercent": 93,
        "GpuTemperatureC": 71, "GpuPowerW": 431.6, "GpuThrottled": True}))
    assert text.splitlines() == [
        "mode:   forensic (ready)",
        "modes:  agent, forensic, off",
        "hold:   forensic by mushishi hold: ./report.sh (client job)",
        "gpu:    28500/32607 MiB used, 93% busy, 71 °C, 432 W, throttled",
    ]


def test_mode_json_shows_the_properties_by_their_dbus_names() -> None:
    values = {"ActiveMode": "agent", "State": "switching", "StateReason": "",
              "Progress": "starting mushishi-tenant@tts.service", "Modes": ["agent", "off"],
              "Holds": [["agent", "job", ""]], "VramUsedMiB": 1, "VramTotalMiB": 2,
              "GpuUtilPercent": 3, "GpuTemperatureC": 4, "GpuPowerW": 5.5,
              "GpuThrottled": False}
    assert GpuModeProperties.from_dbus(values).to_dbus() == values
