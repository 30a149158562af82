"""io.mushishi.GpuMode1 on the system bus (DESIGN.md §6): a thin layer over the manager.

Domain refusals map to D-Bus error names in one place (`ERRORS`). The introspection XML
is checked in as docs/io.mushishi.GpuMode1.xml and tested against this interface.
"""

import contextvars
from collections.abc import Sequence
from typing import Annotated, Protocol

from dbus_fast import Message, MessageType, NameFlag, RequestNameReply
from dbus_fast import introspection as intr
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import (
    DBusBool,
    DBusDouble,
    DBusSignature,
    DBusStr,
    DBusUInt32,
)
from dbus_fast.constants import PropertyAccess
from dbus_fast.errors import DBusError
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property, dbus_signal

from mushishi.services.gpud.core import ModeState, Refusal
from mushishi.shared import dbus_names
from mushishi.shared.gpu import GpuSnapshot

DBusStrList = Annotated[list[str], DBusSignature("as")]
DBusHolds = Annotated[list[list[str]], DBusSignature("a(sss)")]

ERRORS = {
    "unknown_mode": dbus_names.ERROR_UNKNOWN_MODE,
    "switching": dbus_names.ERROR_SWITCHING,
    "held": dbus_names.ERROR_HELD,
    "busy": dbus_names.ERROR_BUSY,
    "not_active": dbus_names.ERROR_NOT_ACTIVE,
    "unknown_hold": dbus_names.ERROR_UNKNOWN_HOLD,
    "not_holder": dbus_names.ERROR_NOT_HOLDER,
    "switch_failed": dbus_names.ERROR_SWITCH_FAILED,
}

# The unique bus name of the caller of the method being handled. dbus-fast does not hand
# the message to ServiceInterface methods, so a message handler that runs just before them
# (in the same synchronous dispatch) records it; the method's task inherits the context.
_caller: contextvars.ContextVar[str] = contextvars.ContextVar("gpumode_caller", default="")


class SwitchError(Exception):
    """A switch that could not even start (systemd refused to isolate)."""


class Manager(Protocol):
    """What the interface needs from gpud's app."""

    mode_state: ModeState
    snapshot: GpuSnapshot
    progress: str

    @property
    def mode_names(self) -> list[str]: ...

    async def switch(self, mode: str, force: bool) -> Refusal | None: ...

    async def busy(self) -> list[str]: ...

    async def hold(self, mode: str, holder: str, reason: str, owner: str) -> int | Refusal: ...

    async def release(self, cookie: int, caller: str) -> Refusal | None: ...


def _raise(refusal: Refusal) -> None:
    raise DBusError(ERRORS[refusal.kind], refusal.message)


def holds_value(state: ModeState) -> list[list[str]]:
    """The Holds property: (mode, holder, reason) per hold."""
    return [[hold.mode, hold.holder, hold.reason] for hold in state.holds]


class GpuModeInterface(ServiceInterface):
    """io.mushishi.GpuMode1: modes, holds and the GPU's readings."""

    def __init__(self, manager: Manager) -> None:
        super().__init__(dbus_names.INTERFACE)
        self.manager = manager

    # -- properties (all read-only; PropertiesChanged via announce()) --------------------
    @dbus_property(name="ActiveMode", access=PropertyAccess.READ)
    def active_mode(self) -> DBusStr:
        return self.manager.mode_state.active_mode

    @dbus_property(name="State", access=PropertyAccess.READ)
    def state(self) -> DBusStr:
        return self.manager.mode_state.state

    @dbus_property(name="StateReason", access=PropertyAccess.READ)
    def state_reason(self) -> DBusStr:
        return self.manager.mode_state.reason

    @dbus_property(name="Progress", access=PropertyAccess.READ)
    def progress(self) -> DBusStr:
        return self.manager.progress

    @dbus_property(name="Modes", access=PropertyAccess.READ)
    def modes(self) -> DBusStrList:
        return self.manager.mode_names

    @dbus_property(name="Holds", access=PropertyAccess.READ)
    def holds(self) -> DBusHolds:
        return holds_value(self.manager.mode_state)

    @dbus_property(name="VramTotalMiB", access=PropertyAccess.READ)
    def vram_total_mib(self) -> DBusUInt32:
        return self.manager.snapshot.total_mib

    @dbus_property(name="VramUsedMiB", access=PropertyAccess.READ)
    def vram_used_mib(self) -> DBusUInt32:
        return self.manager.snapshot.used_mib

    @dbus_property(name="GpuTemperatureC", access=PropertyAccess.READ)
    def gpu_temperature_c(self) -> DBusUInt32:
        return max(0, self.manager.snapshot.temperature_c)

    @dbus_property(name="GpuPowerW", access=PropertyAccess.READ)
    def gpu_power_w(self) -> DBusDouble:
        return float(self.manager.snapshot.power_w)

    @dbus_property(name="GpuUtilPercent", access=PropertyAccess.READ)
    def gpu_util_percent(self) -> DBusUInt32:
        return max(0, self.manager.snapshot.util_percent)

    @dbus_property(name="GpuThrottled", access=PropertyAccess.READ)
    def gpu_throttled(self) -> DBusBool:
        return self.manager.snapshot.throttled

    # -- methods ---------------------------------------------------------------------------
    @dbus_method(name="SwitchMode")
    async def switch_mode(self, mode: DBusStr, force: DBusBool) -> None:
        """Start a switch; returns once the isolate job is queued (ModeChanged follows)."""
        try:
            refusal = await self.manager.switch(mode, force)
        except SwitchError as error:
            raise DBusError(ERRORS["switch_failed"], str(error)) from None
        if refusal is not None:
            _raise(refusal)

    @dbus_method(name="Busy")
    async def busy(self) -> DBusStrList:
        """One human line per finding of the busy probes; empty when idle."""
        return await self.manager.busy()

    @dbus_method(name="HoldMode")
    async def hold_mode(self, mode: DBusStr, holder: DBusStr, reason: DBusStr) -> DBusUInt32:
        """Hold a mode until ReleaseHold or until the caller leaves the bus."""
        result = await self.manager.hold(mode, holder, reason, _caller.get())
        if isinstance(result, Refusal):
            _raise(result)
            raise AssertionError("unreachable")
        return result

    @dbus_method(name="ReleaseHold")
    async def release_hold(self, cookie: DBusUInt32) -> None:
        """Release a hold made by this caller."""
        refusal = await self.manager.release(cookie, _caller.get())
        if refusal is not None:
            _raise(refusal)

    # -- signals ---------------------------------------------------------------------------
    @dbus_signal(name="ModeChanged")
    def mode_changed(self, old: str, new: str) -> Annotated[list[str], DBusSignature("ss")]:
        return [old, new]

    def introspect(self) -> intr.Interface:
        """The interface, with names on the arguments dbus-fast leaves unnamed."""
        interface = super().introspect()
        for signal in interface.signals:
            if signal.name == "ModeChanged":
                for arg, name in zip(signal.args, ("old", "new"), strict=True):
                    arg.name = name
        outputs = {"Busy": "reasons", "HoldMode": "cookie"}
        for method in interface.methods:
            for arg in method.out_args:
                arg.name = outputs.get(method.name)
        return interface

    def announce(self, names: Sequence[str]) -> None:
        """Emit PropertiesChanged with the current values of `names`."""
        getters = {
            "ActiveMode": lambda: self.manager.mode_state.active_mode,
            "State": lambda: self.manager.mode_state.state,
            "StateReason": lambda: self.manager.mode_state.reason,
            "Progress": lambda: self.manager.progress,
            "Modes": lambda: self.manager.mode_names,
            "Holds": lambda: holds_value(self.manager.mode_state),
            "VramTotalMiB": lambda: self.manager.snapshot.total_mib,
            "VramUsedMiB": lambda: self.manager.snapshot.used_mib,
            "GpuTemperatureC": lambda: max(0, self.manager.snapshot.temperature_c),
            "GpuPowerW": lambda: float(self.manager.snapshot.power_w),
            "GpuUtilPercent": lambda: max(0, self.manager.snapshot.util_percent),
            "GpuThrottled": lambda: self.manager.snapshot.throttled,
        }
        if names:
            self.emit_properties_changed({name: getters[name]() for name in names})


def remember_callers(bus: MessageBus) -> None:
    """Record the sender of each call to our interface for the methods that need it."""

    def handler(msg: Message) -> bool:
        if (msg.message_type == MessageType.METHOD_CALL
                and msg.interface == dbus_names.INTERFACE):
            _caller.set(msg.sender or "")
        return False

    bus.add_message_handler(handler)


async def export(bus: MessageBus, interface: GpuModeInterface) -> None:
    """Export first, then own the name: with Type=dbus, readiness means the API answers."""
    remember_callers(bus)
    bus.export(dbus_names.OBJECT_PATH, interface)
    reply = await bus.request_name(dbus_names.BUS_NAME, NameFlag.DO_NOT_QUEUE)
    if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
        raise RuntimeError(f"{dbus_names.BUS_NAME} is already owned on this bus: another "
                           "mushishi-gpud is running")


_XML_HEADER = """<?xml version="1.0"?>
<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<!-- io.mushishi.GpuMode1 at /io/mushishi/GpuMode1 on the system bus (DESIGN.md §6).
     Generated by `python -m mushishi.services.gpud.dbus_api`; checked against the live
     interface by tests/integration/gpud/test_dbus_api.py. Every property is read-only
     and announced with PropertiesChanged. -->
"""


def introspection_xml() -> str:
    """docs/io.mushishi.GpuMode1.xml: the interface as D-Bus introspection data."""
    from xml.dom import minidom

    text = intr.Node(None, interfaces=[GpuModeInterface(None).introspect()]).tostring()  # type: ignore[arg-type]
    pretty = minidom.parseString(text).documentElement.toprettyxml(  # noqa: S318 - our own XML
        indent="  ")
    return _XML_HEADER + "\n".join(line for line in pretty.splitlines() if line.strip()) + "\n"


if __name__ == "__main__":
    print(introspection_xml(), end="")  # noqa: T201 - a generator, not the daemon
