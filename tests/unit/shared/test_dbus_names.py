"""D-Bus names agree with each other and with the shipped policy file."""

from __future__ import annotations

from mushishi.shared import dbus_names
from tests.paths import REPO


def test_policy_file_names_the_bus_name_and_interface() -> None:
    policy = (REPO / "units" / "io.mushishi.GpuMode1.conf").read_text()
    assert f'own="{dbus_names.BUS_NAME}"' in policy
    assert f'send_interface="{dbus_names.INTERFACE}"' in policy


def test_error_names_live_under_the_interface() -> None:
    errors = [getattr(dbus_names, n) for n in dir(dbus_names) if n.startswith("ERROR_")]
    assert len(errors) >= 5
    assert all(e.startswith(dbus_names.INTERFACE + ".Error.") for e in errors)
