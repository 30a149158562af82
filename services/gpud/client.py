"""A client of io.mushishi.GpuMode1, for the CLI, tests and benchmarks: D-Bus only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError

from mushishi.shared import dbus_names

PROPERTIES = "org.freedesktop.DBus.Properties"


@dataclass(frozen=True, slots=True)
class SwitchOutcome:
    """How a switch the client waited for ended."""

    ok: bool
    mode: str
    reason: str
    seconds: float


class GpuModeError(Exception):
    """A D-Bus error from gpud (or the bus), with its error name."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(text)
        self.name = name
        self.text = text


def _plain(value: Any) -> Any:
    """A property value as plain JSON-like data (structs as lists)."""
    if isinstance(value, Variant):
        value = value.value
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


class GpuModeClient:
    """One connection to the bus; the gpud object's properties, methods and signals."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._watching = False

    @classmethod
    async def connect(cls, address: str | None = None) -> GpuModeClient:
        """Connect to the system bus (or `address`)."""
        bus = MessageBus(bus_address=address) if address else MessageBus(
            bus_type=BusType.SYSTEM)
        return cls(await bus.connect())

    def close(self) -> None:
        """Disconnect."""
        self.bus.disconnect()

    async def _call(self, member: str, signature: str = "", body: list[Any] | None = None, *,
                    interface: str = dbus_names.INTERFACE,
                    destination: str = dbus_names.BUS_NAME,
                    path: str = dbus_names.OBJECT_PATH) -> list[Any]:
        reply = await self.bus.call(Message(destination=destination, path=path,
                                            interface=interface, member=member,
                                            signature=signature, body=body or []))
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            text = str(reply.body[0]) if reply.body else ""
            raise GpuModeError(reply.error_name or "", text)
        return list(reply.body)

    async def properties(self) -> dict[str, Any]:
        """Every property of io.mushishi.GpuMode1."""
        (values,) = await self._call("GetAll", "s", [dbus_names.INTERFACE], interface=PROPERTIES)
        return {name: _plain(value) for name, value in values.items()}

    async def get(self, name: str) -> Any:
        """One property."""
        (value,) = await self._call("Get", "ss", [dbus_names.INTERFACE, name],
                                    interface=PROPERTIES)
        return _plain(value)

    async def switch(self, mode: str, force: bool = False) -> None:
        """SwitchMode: returns once the switch is under way (or raises the refusal)."""
        while not self.events.empty():  # what came before this switch is not about it
            self.events.get_nowait()
        await self._call("SwitchMode", "sb", [mode, force])

    async def busy(self) -> list[str]:
        """Busy(): one line per finding."""
        (lines,) = await self._call("Busy")
        return list(lines)

    async def hold(self, mode: str, holder: str, reason: str) -> int:
        """HoldMode: the cookie; the hold ends with this connection."""
        (cookie,) = await self._call("HoldMode", "sss", [mode, holder, reason])
        return int(cookie)

    async def release(self, cookie: int) -> None:
        """ReleaseHold."""
        await self._call("ReleaseHold", "u", [cookie])

    async def watch(self) -> None:
        """Queue ModeChanged and PropertiesChanged of gpud's object on `events`."""
        if self._watching:
            return
        self._watching = True

        def handler(msg: Message) -> bool:
            if msg.message_type != MessageType.SIGNAL or msg.path != dbus_names.OBJECT_PATH:
                return False
            if msg.interface == dbus_names.INTERFACE and msg.member == "ModeChanged":
                self.events.put_nowait(("ModeChanged", (msg.body[0], msg.body[1])))
            elif msg.interface == PROPERTIES and msg.member == "PropertiesChanged":
                changed = {k: _plain(v) for k, v in msg.body[1].items()}
                self.events.put_nowait(("PropertiesChanged", changed))
            return False

        self.bus.add_message_handler(handler)
        for rule in (
            f"type='signal',interface='{dbus_names.INTERFACE}',member='ModeChanged',"
            f"path='{dbus_names.OBJECT_PATH}'",
            f"type='signal',interface='{PROPERTIES}',member='PropertiesChanged',"
            f"path='{dbus_names.OBJECT_PATH}',arg0='{dbus_names.INTERFACE}'",
        ):
            await self._call("AddMatch", "s", [rule], interface="org.freedesktop.DBus",
                             destination="org.freedesktop.DBus", path="/org/freedesktop/DBus")

    async def wait_switch(self, mode: str, on_progress: Callable[[str], None] | None = None,
                          clock: Callable[[], float] = time.monotonic) -> SwitchOutcome:
        """After SwitchMode (with watch() called before it): wait for ModeChanged to `mode`,
        or State=failed. Wrap it in asyncio.timeout() to bound the wait."""
        started = clock()
        props = await self.properties()
        if props["State"] != "switching":
            ok = props["ActiveMode"] == mode and props["State"] in ("ready", "off")
            return SwitchOutcome(ok, props["ActiveMode"], props["StateReason"], 0.0)
        state = "switching"
        while True:
            kind, value = await self.events.get()
            if kind == "ModeChanged" and value[1] == mode:
                return SwitchOutcome(True, mode, "", clock() - started)
            if kind != "PropertiesChanged":
                continue
            if "Progress" in value and value["Progress"] and on_progress is not None:
                on_progress(value["Progress"])
            state = value.get("State", state)
            if state == "failed":
                reason = value.get("StateReason") or await self.get("StateReason")
                active = value.get("ActiveMode") or await self.get("ActiveMode")
                return SwitchOutcome(False, active, reason, clock() - started)


def describe_error(error: GpuModeError | DBusError) -> tuple[str, int]:
    """A message naming what to do, and the exit status (sysexits.h)."""
    name = error.name if isinstance(error, GpuModeError) else error.type
    text = error.text
    if name == "org.freedesktop.DBus.Error.AccessDenied":
        return ("not allowed: only root and members of group mushishi may call "
                f"{dbus_names.BUS_NAME} methods (policy: /etc/dbus-1/system.d/"
                f"{dbus_names.BUS_NAME}.conf)", 77)
    if name in ("org.freedesktop.DBus.Error.ServiceUnknown",
                "org.freedesktop.DBus.Error.NameHasNoOwner"):
        return ("mushishi-gpud is not running (systemctl status mushishi-gpud.service)", 69)
    if name in (dbus_names.ERROR_BUSY, dbus_names.ERROR_HELD, dbus_names.ERROR_SWITCHING):
        return (text, 75)
    if name in (dbus_names.ERROR_UNKNOWN_MODE, dbus_names.ERROR_NOT_ACTIVE):
        return (text, 64)
    return (text or name, 1)
