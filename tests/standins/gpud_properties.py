"""A stand-in for gpud's read-only io.mushishi.GpuMode1 properties on a real (private)
dbus-daemon, for the watchdog's reads until the real gpud lands: the property names and
D-Bus types of DESIGN.md §6 plus GpuTemperatureC (u), GpuPowerW (d), GpuUtilPercent (u),
GpuThrottled (b) and StateReason (s).

Types use dbus-fast's typed annotations (`DBusStr`, `DBusUInt32`…).
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

from dbus_fast.aio import MessageBus
from dbus_fast.annotations import (
    Annotated,
    DBusBool,
    DBusDouble,
    DBusSignature,
    DBusStr,
    DBusUInt32,
)
from dbus_fast.service import PropertyAccess, ServiceInterface, dbus_property

from mushishi.shared import dbus_names


class GpuMode1Properties(ServiceInterface):
    """io.mushishi.GpuMode1's properties with values a test sets."""

    def __init__(self, *, temperature_c: int = 55, throttled: bool = False,
                 state: str = "ready", state_reason: str = "") -> None:
        super().__init__(dbus_names.INTERFACE)
        self.temperature_c = temperature_c
        self.throttled = throttled
        self.state = state
        self.state_reason = state_reason

    @dbus_property(access=PropertyAccess.READ)
    def ActiveMode(self) -> DBusStr:
        return "off"

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> DBusStr:
        return self.state

    @dbus_property(access=PropertyAccess.READ)
    def Modes(self) -> Annotated[list[str], DBusSignature("as")]:
        return ["agent", "audio", "creative", "forensic", "off"]

    @dbus_property(access=PropertyAccess.READ)
    def Holds(self) -> Annotated[list[list[str]], DBusSignature("a(sss)")]:
        return []

    @dbus_property(access=PropertyAccess.READ)
    def VramTotalMiB(self) -> DBusUInt32:
        return 32607

    @dbus_property(access=PropertyAccess.READ)
    def VramUsedMiB(self) -> DBusUInt32:
        return 500

    @dbus_property(access=PropertyAccess.READ)
    def GpuTemperatureC(self) -> DBusUInt32:
        return self.temperature_c

    @dbus_property(access=PropertyAccess.READ)
    def GpuPowerW(self) -> DBusDouble:
        return 20.0

    @dbus_property(access=PropertyAccess.READ)
    def GpuUtilPercent(self) -> DBusUInt32:
        return 0

    @dbus_property(access=PropertyAccess.READ)
    def GpuThrottled(self) -> DBusBool:
        return self.throttled

    @dbus_property(access=PropertyAccess.READ)
    def StateReason(self) -> DBusStr:
        return self.state_reason


async def serve(address: str, interface: GpuMode1Properties) -> MessageBus:
    """Export first, then request the name (as gpud does)."""
    bus = await MessageBus(bus_address=address).connect()
    bus.export(dbus_names.OBJECT_PATH, interface)
    await bus.request_name(dbus_names.BUS_NAME)
    return bus


@contextlib.contextmanager
def private_bus(directory: Path) -> Iterator[str]:
    """A real dbus-daemon (session policy: same-user access) on a socket in `directory`."""
    socket = directory / "bus"
    daemon = subprocess.Popen(
        ["/usr/bin/dbus-daemon", "--session", "--nofork", "--nopidfile",
         f"--address=unix:path={socket}", "--print-address=1"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert daemon.stdout is not None
        address = daemon.stdout.readline().strip()
        if not address:
            raise RuntimeError("dbus-daemon did not start")
        yield address
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)

