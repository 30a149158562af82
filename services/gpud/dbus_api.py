"""io.mushishi.GpuMode1 on the system bus (DESIGN.md §6): a thin layer over the manager.

Every property comes from one table (`PROPERTIES`: D-Bus name, signature, how the manager
shows it); the interface's getters are made from it, and `publish()` emits
PropertiesChanged for the properties whose values differ from the last ones published.
Domain errors map to D-Bus error names in one table (`ERRORS`), applied to every method by
one decorator (`domain_errors`). The introspection XML is checked in as
docs/io.mushishi.GpuMode1.xml and tested against this interface.
"""

import contextvars
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, ParamSpec, Protocol, TypeVar

from dbus_fast import Message, MessageType, NameFlag, RequestNameReply
from dbus_fast import introspection as intr
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusBool, DBusSignature, DBusStr, DBusUInt32
from dbus_fast.constants import PropertyAccess
from dbus_fast.errors import DBusError
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property, dbus_signal

from mushishi.services.gpud.core import ModeState, Refusal, SwitchError, check_reason
from mushishi.shared import dbus_names
from mushishi.shared.gpu import GpuSnapshot

DBusStrList = Annotated[list[str], DBusSignature("as")]

# What the manager refuses (Refusal.kind) or fails with (SwitchError.kind), by D-Bus name.
ERRORS = {
    "unknown_mode": dbus_names.ERROR_UNKNOWN_MODE,
    "switching": dbus_names.ERROR_SWITCHING,
    "held": dbus_names.ERROR_HELD,
    "busy": dbus_names.ERROR_BUSY,
    "not_active": dbus_names.ERROR_NOT_ACTIVE,
    "unknown_hold": dbus_names.ERROR_UNKNOWN_HOLD,
    "not_holder": dbus_names.ERROR_NOT_HOLDER,
    "bad_reason": dbus_names.ERROR_BAD_REASON,
    SwitchError.kind: dbus_names.ERROR_SWITCH_FAILED,
}

# The unique bus name of the caller of the method being handled. dbus-fast does not hand
# the message to ServiceInterface methods, so a message handler that runs just before them
# (in the same synchronous dispatch) records it; the method's task inherits the context.
_caller: contextvars.ContextVar[str] = contextvars.ContextVar("gpumode_caller", default="")


class Manager(Protocol):
    """What the interface needs from gpud's app."""

    mode_state: ModeState
    snapshot: GpuSnapshot
    progress: str

    @property
    def mode_names(self) -> list[str]: ...

    async def switch(self, mode: str, force: bool, why: str = ...) -> Refusal | None: ...

    async def busy(self) -> list[str]: ...

    async def hold(self, mode: str, holder: str, reason: str, owner: str) -> int | Refusal: ...

    async def release(self, cookie: int, caller: str) -> Refusal | None: ...


def holds_value(state: ModeState) -> list[list[str]]:
    """The Holds property: (mode, holder, reason) per hold."""
    return [[hold.mode, hold.holder, hold.reason] for hold in state.holds]


@dataclass(frozen=True, slots=True)
class Property:
    """One read-only property: its D-Bus name and signature, and its value from the manager."""

    name: str
    signature: str
    value: Callable[[Manager], Any]


PROPERTIES: tuple[Property, ...] = (
    Property("ActiveMode", "s", lambda m: m.mode_state.active_mode),
    Property("State", "s", lambda m: m.mode_state.state),
    Property("StateReason", "s", lambda m: m.mode_state.reason),
    Property("Progress", "s", lambda m: m.progress),
    Property("Modes", "as", lambda m: m.mode_names),
    Property("Holds", "a(sss)", lambda m: holds_value(m.mode_state)),
    Property("LastSwitchReason", "s", lambda m: m.mode_state.last_switch_reason),
    Property("VramTotalMiB", "u", lambda m: m.snapshot.total_mib),
    Property("VramUsedMiB", "u", lambda m: m.snapshot.used_mib),
    Property("GpuTemperatureC", "u", lambda m: max(0, m.snapshot.temperature_c)),
    Property("GpuPowerW", "d", lambda m: float(m.snapshot.power_w)),
    Property("GpuUtilPercent", "u", lambda m: max(0, m.snapshot.util_percent)),
    Property("GpuThrottled", "b", lambda m: m.snapshot.throttled),
)


P = ParamSpec("P")
R = TypeVar("R")


def domain_errors(method: Callable[P, Awaitable[R | Refusal]]) -> Callable[P, Awaitable[R]]:
    """A method whose Refusal (returned) or SwitchError (raised) becomes its D-Bus error."""
    @functools.wraps(method)
    async def mapped(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            result = await method(*args, **kwargs)
        except SwitchError as error:
            raise DBusError(ERRORS[error.kind], str(error)) from None
        if isinstance(result, Refusal):
            raise DBusError(ERRORS[result.kind], result.message)
        return result
    return mapped


class GpuModeInterface(ServiceInterface):
    """io.mushishi.GpuMode1: modes, holds and the GPU's readings (properties: PROPERTIES)."""

    def __init__(self, manager: Manager) -> None:
        super().__init__(dbus_names.INTERFACE)
        self.manager = manager
        self._published = self.values() if manager is not None else {}

    def values(self) -> dict[str, Any]:
        """Every property's current value, by D-Bus name."""
        return {prop.name: prop.value(self.manager) for prop in PROPERTIES}

    def publish(self) -> None:
        """Emit PropertiesChanged with the properties that changed since the last call."""
        values = self.values()
        changed = {name: value for name, value in values.items()
                   if self._published.get(name) != value}
        self._published = values
        if changed:
            self.emit_properties_changed(changed)

    # -- methods ---------------------------------------------------------------------------
    @dbus_method(name="SwitchMode")
    @domain_errors
    async def switch_mode(self, mode: DBusStr, force: DBusBool) -> None:
        """Start a switch; returns once the isolate job is queued (ModeChanged follows)."""
        return await self.manager.switch(mode, force)

    @dbus_method(name="SwitchModeWithReason")
    @domain_errors
    async def switch_mode_with_reason(self, mode: DBusStr, force: DBusBool,
                                      reason: DBusStr) -> None:
        """SwitchMode, recording why (LastSwitchReason): `manual`, `hold-then`, `idle` or
        `request:profile=P`."""
        refusal = check_reason(reason)
        if refusal is not None:
            return refusal
        return await self.manager.switch(mode, force, reason)

    @dbus_method(name="Busy")
    async def busy(self) -> DBusStrList:
        """One human line per finding of the busy probes; empty when idle."""
        return await self.manager.busy()

    @dbus_method(name="HoldMode")
    @domain_errors
    async def hold_mode(self, mode: DBusStr, holder: DBusStr, reason: DBusStr) -> DBusUInt32:
        """Hold a mode until ReleaseHold or until the caller leaves the bus."""
        return await self.manager.hold(mode, holder, reason, _caller.get())

    @dbus_method(name="ReleaseHold")
    @domain_errors
    async def release_hold(self, cookie: DBusUInt32) -> None:
        """Release a hold made by this caller."""
        return await self.manager.release(cookie, _caller.get())

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


def _getter(prop: Property) -> Any:
    def value(self: GpuModeInterface) -> Any:
        return prop.value(self.manager)

    value.__annotations__ = {"return": prop.signature}  # dbus-fast reads the signature here
    value.__name__ = value.__qualname__ = prop.name  # and finds the getter by this name
    return dbus_property(access=PropertyAccess.READ, name=prop.name)(value)


for _prop in PROPERTIES:  # the D-Bus properties, one per row of the table
    setattr(GpuModeInterface, _prop.name, _getter(_prop))


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
