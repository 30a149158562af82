"""The D-Bus layer every client in mushishi uses (dbus-fast): connect, call, plain values,
the bus daemon's own calls, and following who owns a name.

A call that the peer (or the bus daemon) answers with an error raises `BusError`, which
carries the D-Bus error name and its text: `io.mushishi.GpuMode1.Error.Held`,
`org.freedesktop.DBus.Error.ServiceUnknown` when nobody owns the name, or
`org.freedesktop.DBus.Error.AccessDenied` from the bus policy. A connection that cannot be
made raises what dbus-fast raises (OSError, ValueError, AuthError…): the caller decides
what "no bus" means.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from mushishi.shared import dbus_names


class BusError(Exception):
    """An error answer to a D-Bus call: `name` is the D-Bus error name, `text` its message."""

    def __init__(self, name: str, text: str = "") -> None:
        super().__init__(text or name)
        self.name = name
        self.text = text

    @property
    def no_owner(self) -> bool:
        """Nobody owns the name that was called (the daemon is not on the bus)."""
        return self.name in dbus_names.DBUS_ERRORS_NO_OWNER

    def one_line(self) -> str:
        """`name: text`, for a log line or a reading's detail."""
        return f"{self.name}: {self.text}"


async def connect(address: str | None = None) -> MessageBus:
    """A connection to the system bus ($DBUS_SYSTEM_BUS_ADDRESS honoured), or to `address`."""
    bus = MessageBus(bus_address=address) if address else MessageBus(bus_type=BusType.SYSTEM)
    return await bus.connect()


def plain(value: Any) -> Any:
    """A D-Bus value as plain data: variants unwrapped, structs and arrays as lists, dicts
    with plain values."""
    if isinstance(value, Variant):
        value = value.value
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value


async def call(bus: MessageBus, destination: str, path: str, interface: str, member: str,
               signature: str = "", body: Sequence[Any] = (), *,
               timeout_s: float | None = None) -> list[Any]:
    """Call a method and return its reply's body; raise BusError for an error reply and
    TimeoutError when `timeout_s` passes without one."""
    message = Message(destination=destination, path=path, interface=interface, member=member,
                      signature=signature, body=list(body))
    if timeout_s is None:
        reply = await bus.call(message)
    else:
        reply = await asyncio.wait_for(bus.call(message), timeout_s)
    if reply is None:
        raise BusError(dbus_names.DBUS_ERROR_NO_REPLY, f"no reply to {interface}.{member}")
    if reply.message_type == MessageType.ERROR:
        raise BusError(reply.error_name or dbus_names.DBUS_ERROR_FAILED,
                       str(reply.body[0]) if reply.body else "")
    return list(reply.body)


async def get_all(bus: MessageBus, destination: str, path: str, interface: str, *,
                  timeout_s: float | None = None) -> dict[str, Any]:
    """Every property of `interface` on an object, as plain values."""
    (values,) = await call(bus, destination, path, dbus_names.PROPERTIES_INTERFACE, "GetAll",
                           "s", [interface], timeout_s=timeout_s)
    return {name: plain(value) for name, value in values.items()}


async def get_property(bus: MessageBus, destination: str, path: str, interface: str,
                       name: str, *, timeout_s: float | None = None) -> Any:
    """One property, as a plain value."""
    (value,) = await call(bus, destination, path, dbus_names.PROPERTIES_INTERFACE, "Get",
                          "ss", [interface, name], timeout_s=timeout_s)
    return plain(value)


def properties_changed(message: Message, interface: str | None = None
                       ) -> tuple[dict[str, Any], list[str]]:
    """(changed values as plain data, invalidated names) of a PropertiesChanged signal about
    `interface` (None: any); both empty for any other message."""
    if (message.message_type != MessageType.SIGNAL
            or message.interface != dbus_names.PROPERTIES_INTERFACE
            or message.member != "PropertiesChanged" or len(message.body) != 3
            or (interface is not None and message.body[0] != interface)):
        return {}, []
    _interface, changed, invalidated = message.body
    return {name: plain(value) for name, value in changed.items()}, list(invalidated)


def signal_rule(*, sender: str | None = None, interface: str | None = None,
                member: str | None = None, path: str | None = None,
                path_namespace: str | None = None, arg0: str | None = None) -> str:
    """A match rule for signals (AddMatch)."""
    parts = {"sender": sender, "interface": interface, "member": member, "path": path,
             "path_namespace": path_namespace, "arg0": arg0}
    return ",".join(["type='signal'", *(f"{key}='{value}'" for key, value in parts.items()
                                        if value is not None)])


async def _bus_daemon(bus: MessageBus, member: str, signature: str = "",
                      body: Sequence[Any] = ()) -> list[Any]:
    return await call(bus, dbus_names.DBUS_BUS_NAME, dbus_names.DBUS_OBJECT_PATH,
                      dbus_names.DBUS_INTERFACE, member, signature, body)


async def add_match(bus: MessageBus, rule: str) -> None:
    """Ask the bus daemon for the signals `rule` matches."""
    await _bus_daemon(bus, "AddMatch", "s", [rule])


def remove_match(bus: MessageBus, rule: str) -> None:
    """Stop receiving what `rule` matched (sent without waiting; nothing on a closed bus)."""
    if bus.connected:
        bus.send(Message(destination=dbus_names.DBUS_BUS_NAME,
                         path=dbus_names.DBUS_OBJECT_PATH, interface=dbus_names.DBUS_INTERFACE,
                         member="RemoveMatch", signature="s", body=[rule]))


async def name_has_owner(bus: MessageBus, name: str) -> bool:
    """Whether a bus name is owned (a unique name: whether that connection is still there)."""
    (owned,) = await _bus_daemon(bus, "NameHasOwner", "s", [name])
    return bool(owned)


async def name_owner(bus: MessageBus, name: str) -> str:
    """The unique name that owns `name`, or "" when nobody does."""
    try:
        (owner,) = await _bus_daemon(bus, "GetNameOwner", "s", [name])
    except BusError as error:
        if error.no_owner:
            return ""
        raise
    return str(owner)


async def caller_uid(bus: MessageBus, name: str) -> int:
    """The unix uid behind a bus name (a method's caller)."""
    (uid,) = await _bus_daemon(bus, "GetConnectionUnixUser", "s", [name])
    return int(uid)


class NameOwnerWatch:
    """Follows the owner of one bus name; made by `watch_name_owner`."""

    def __init__(self, bus: MessageBus, name: str, on_change: Callable[[str], None]) -> None:
        self.bus = bus
        self.name = name
        self.owner = ""
        self._on_change = on_change
        self._following = False
        self.rule = signal_rule(sender=dbus_names.DBUS_BUS_NAME,
                                interface=dbus_names.DBUS_INTERFACE,
                                member="NameOwnerChanged", arg0=name)

    def _handle(self, message: Message) -> bool:
        if (message.message_type == MessageType.SIGNAL and message.member == "NameOwnerChanged"
                and message.interface == dbus_names.DBUS_INTERFACE
                and message.sender == dbus_names.DBUS_BUS_NAME and len(message.body) == 3
                and message.body[0] == self.name and self._following):
            owner = str(message.body[2])
            if owner != self.owner:
                self.owner = owner
                self._on_change(owner)
        return False  # other handlers may want the same signal

    def cancel(self) -> None:
        """Stop following (idempotent)."""
        self.bus.remove_message_handler(self._handle)
        if self._following:
            self._following = False
            remove_match(self.bus, self.rule)


async def watch_name_owner(bus: MessageBus, name: str, on_change: Callable[[str], None]
                           ) -> NameOwnerWatch:
    """Follow who owns `name`: its current owner is `watch.owner` ("" for nobody) once this
    returns, and `on_change(owner)` is called on every change after that ("" when it goes).

    Signals that arrive before the owner is read are older than that answer (the bus
    daemon keeps its messages in order), so they are not reported.
    """
    watch = NameOwnerWatch(bus, name, on_change)
    bus.add_message_handler(watch._handle)
    matched = False
    try:
        await add_match(bus, watch.rule)
        matched = True
        watch.owner = await name_owner(bus, name)
    except BaseException:
        bus.remove_message_handler(watch._handle)
        if matched:
            remove_match(bus, watch.rule)
        raise
    watch._following = True
    return watch
