"""A minimal io.mushishi.GpuMode1 service (DESIGN.md §6) for tests of its clients.

It exports the §6 interface on a real bus: the properties (with gpud's read-only GPU ones:
GpuTemperatureC, GpuPowerW, GpuUtilPercent, GpuThrottled, StateReason), SwitchMode/Busy/
HoldMode/ReleaseHold, SwitchModeWithReason and LastSwitchReason, ModeChanged and
PropertiesChanged. Tests drive it with `set_mode()`, script SwitchMode with `busy_reasons`,
`tenants` + `busy_tenants`, `refuse_switch`, `switch_delay` and `before_ready` (awaited
just before a switch ends, as gpud waits for the tenants' READY), and set the GPU readings
in the constructor.

Like gpud, SwitchMode (without force) refuses with `Error.Busy` only for work that the
switch would stop: every line of `busy_reasons`, and the lines of `busy_tenants` whose
tenant the target mode does not run (gpud's own rule, `services/gpud/core.py`). Busy()
reports all of them.
"""

# No `from __future__ import annotations`: dbus-fast reads the D-Bus signatures from the
# evaluated annotations.
import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated

from dbus_fast import BusType, DBusError
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusBool, DBusDouble, DBusSignature, DBusStr, DBusUInt32
from dbus_fast.service import (
    PropertyAccess,
    ServiceInterface,
    dbus_method,
    dbus_property,
    dbus_signal,
)

from mushishi.services.gpud.core import busy_refusal, leaving_tenants
from mushishi.shared import dbus_names

StrList = Annotated[list[str], DBusSignature("as")]
Holds = Annotated[list[list[str]], DBusSignature("a(sss)")]
OldNew = Annotated[list[str], DBusSignature("ss")]
MODES = ["agent", "audio", "creative", "forensic", "off"]


class GpuModeStandin(ServiceInterface):
    """The stand-in service object; `connect(address)` exports it and takes the bus name."""

    def __init__(self, modes: list[str] = MODES, active: str = "off", state: str = "ready", *,
                 temperature_c: int = 55, power_w: float = 20.0, util_percent: int = 0,
                 throttled: bool = False, state_reason: str = "") -> None:
        super().__init__(dbus_names.INTERFACE)
        self.modes = list(modes)
        self.active = active
        self.state = state
        self.temperature_c = temperature_c
        self.power_w = power_w
        self.util_percent = util_percent
        self.throttled = throttled
        self.state_reason = state_reason
        self.holds: list[list[str]] = []
        self.busy_reasons: list[str] = []  # busy lines of tenants that any switch stops
        self.tenants: dict[str, list[str]] = {}  # mode -> its tenants ([modes.X] tenants)
        self.busy_tenants: dict[str, str] = {}  # tenant of the active mode -> its busy line
        self.refuse_switch: str | None = None  # a D-Bus error name to answer SwitchMode with
        self.switch_delay = 0.05
        self.switch_calls: list[tuple[str, bool]] = []
        self.switch_reasons: list[str] = []  # LastSwitchReason of each switch asked for
        self.last_switch_reason = ""
        self.before_ready: Callable[[], Awaitable[None]] | None = None
        self._finishing: set[asyncio.Task[None]] = set()
        self.bus: MessageBus | None = None
        self._cookie = 0

    async def connect(self, address: str) -> "GpuModeStandin":
        """Export on the bus at `address`, then own io.mushishi.GpuMode1."""
        self.bus = await MessageBus(bus_address=address, bus_type=BusType.SESSION).connect()
        self.bus.export(dbus_names.OBJECT_PATH, self)
        await self.bus.request_name(dbus_names.BUS_NAME)
        return self

    def disconnect(self) -> None:
        """Leave the bus (the name's owner disappears)."""
        if self.bus is not None:
            self.bus.disconnect()
            self.bus = None

    def set_mode(self, mode: str, state: str = "ready") -> None:
        """Become `mode` in `state`, emitting PropertiesChanged and (on a change) ModeChanged."""
        old = self.active
        self.active = mode
        self.state = state
        self.emit_properties_changed({"ActiveMode": mode, "State": state})
        if old != mode:
            self.ModeChanged(old, mode)

    def set_state(self, state: str) -> None:
        """Change only State (e.g. "switching")."""
        self.state = state
        self.emit_properties_changed({"State": state})

    @dbus_property(access=PropertyAccess.READ)
    def ActiveMode(self) -> DBusStr:
        return self.active

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> DBusStr:
        return self.state

    @dbus_property(access=PropertyAccess.READ)
    def Modes(self) -> StrList:
        return self.modes

    @dbus_property(access=PropertyAccess.READ)
    def Holds(self) -> Holds:
        return self.holds

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
        return self.power_w

    @dbus_property(access=PropertyAccess.READ)
    def GpuUtilPercent(self) -> DBusUInt32:
        return self.util_percent

    @dbus_property(access=PropertyAccess.READ)
    def GpuThrottled(self) -> DBusBool:
        return self.throttled

    @dbus_property(access=PropertyAccess.READ)
    def StateReason(self) -> DBusStr:
        return self.state_reason

    @dbus_property(access=PropertyAccess.READ)
    def LastSwitchReason(self) -> DBusStr:
        return self.last_switch_reason

    def busy_lines(self, switching_to: str | None = None) -> list[str]:
        """What the busy probes find: on every running tenant (Busy()), or on the ones a
        switch to `switching_to` would stop (SwitchMode)."""
        running = [t for t in self.tenants.get(self.active, []) if t in self.busy_tenants]
        if switching_to is not None:
            running = leaving_tenants(self.tenants, running, switching_to)
        return [*self.busy_reasons, *(self.busy_tenants[t] for t in running)]

    @dbus_method()
    async def SwitchMode(self, mode: DBusStr, force: DBusBool) -> None:
        await self._switch(mode, force, "manual")

    @dbus_method()
    async def SwitchModeWithReason(self, mode: DBusStr, force: DBusBool,
                                   reason: DBusStr) -> None:
        await self._switch(mode, force, reason)

    async def _switch(self, mode: str, force: bool, reason: str) -> None:
        self.switch_calls.append((mode, force))
        self.switch_reasons.append(reason)
        if self.refuse_switch:
            raise DBusError(self.refuse_switch, "stand-in refuses the switch")
        if mode not in self.modes:
            raise DBusError(dbus_names.ERROR_UNKNOWN_MODE, f"unknown mode {mode}")
        refusal = None if force else busy_refusal(self.busy_lines(switching_to=mode))
        if refusal is not None:
            raise DBusError(dbus_names.ERROR_BUSY, refusal.message)
        self.last_switch_reason = reason
        self.emit_properties_changed({"LastSwitchReason": reason})
        self.set_state("switching")
        task = asyncio.get_running_loop().create_task(self._finish(mode))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def _finish(self, mode: str) -> None:
        """Like gpud: SwitchMode has returned once the switch is under way."""
        await asyncio.sleep(self.switch_delay)
        if self.before_ready is not None:
            await self.before_ready()
        self.set_mode(mode, "ready")

    @dbus_method()
    def Busy(self) -> StrList:
        return self.busy_lines()

    @dbus_method()
    def HoldMode(self, mode: DBusStr, holder: DBusStr, reason: DBusStr) -> DBusUInt32:
        self._cookie += 1
        self.holds.append([mode, holder, reason])
        self.emit_properties_changed({"Holds": self.holds})
        return self._cookie

    @dbus_method()
    def ReleaseHold(self, cookie: DBusUInt32) -> None:
        if self.holds:
            self.holds.pop()
            self.emit_properties_changed({"Holds": self.holds})

    @dbus_signal()
    def ModeChanged(self, old: DBusStr, new: DBusStr) -> OldNew:
        return [old, new]
