"""Unit object paths, the D-Bus client's error messages, and `mushishi mode`'s view."""

from __future__ import annotations

import pytest

from mushishi.ctl.mode_cmd import render
from mushishi.services.gpud.client import GpuModeError, describe_error
from mushishi.services.gpud.systemd import unit_path
from mushishi.shared import dbus_names


@pytest.mark.parametrize(("unit", "path"), [
    ("mushishi-agent.target", "/org/freedesktop/systemd1/unit/mushishi_2dagent_2etarget"),
    ("mushishi-tenant@vllm-forensic.service",
     "/org/freedesktop/systemd1/unit/mushishi_2dtenant_40vllm_2dforensic_2eservice"),
    ("9p.mount", "/org/freedesktop/systemd1/unit/_39p_2emount"),
])
def test_unit_path_escapes_like_systemd(unit: str, path: str) -> None:
    assert unit_path(unit) == path


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
    message, code = describe_error(GpuModeError(name, "the text"))
    assert code == status and says in message


def test_render_shows_mode_holds_and_gpu() -> None:
    text = render({"ActiveMode": "forensic", "State": "ready", "StateReason": "",
                   "Progress": "", "Modes": ["agent", "forensic", "off"],
                   "Holds": [["forensic", "mushishi hold: ./report.sh", "client job"]],
                   "VramUsedMiB": 28500, "VramTotalMiB": 32607, "GpuUtilPercent": 93,
                   "GpuTemperatureC": 71, "GpuPowerW": 431.6, "GpuThrottled": True})
    assert text.splitlines() == [
        "mode:   forensic (ready)",
        "modes:  agent, forensic, off",
        "hold:   forensic by mushishi hold: ./report.sh (client job)",
        "gpu:    28500/32607 MiB used, 93% busy, 71 °C, 432 W, throttled",
    ]
