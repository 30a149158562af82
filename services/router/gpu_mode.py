"""A D-Bus client of io.mushishi.GpuMode1 (DESIGN.md §6): follows the GPU mode for routing.

It watches the name's owner, reads every property when gpud appears, then follows
PropertiesChanged and ModeChanged. When gpud is not on the bus (or there is no bus), the
view is `GPU_ABSENT` and the router falls back to health probing alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from mushishi.services.router.core import GPU_ABSENT, GpuView
from mushishi.shared import dbus_names
from mushishi.shared.tasks import cancel_and_wait

log = logging.getLogger("mushishi.router.gpu_mode")

_DBUS = "org.freedesktop.DBus"
_PROPERTIES = "org.freedesktop.DBus.Properties"
RECONNECT_S = 5.0
CALL_TIMEOUT_S = 5.0


class GpuModeError(Exception):
    """gpud refused a call; `name` is the D-Bus error name (io.mushishi.GpuMode1.Error.Busy)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


class GpuModeClient:
    """Keeps `view` current and calls `on_change(view)` whenever it changes."""

    def __init__(self, on_change: Callable[[GpuView], None], *,
                 bus_address: str | None = None) -> None:
        self._on_change = on_change
        self._bus_address = bus_address
        self._bus: MessageBus | None = None
        self._properties: dict[str, Any] = {}
        self.view: GpuView = GPU_ABSENT
        self._task: asyncio.Task[None] | None = None
        self._refresh: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()  # set once the first bus connection is made

    def start(self) -> None:
        """Start following the bus in the background."""
        self._task = asyncio.create_task(self._run(), name="gpu-mode-client")

    async def close(self) -> None:
        """Stop following and disconnect."""
        if self._task is not None:
            await cancel_and_wait(self._task)
        if self._bus is not None:
            self._bus.disconnect()

    def _publish(self, view: GpuView) -> None:
        if view != self.view:
            log.info("GPU mode: %s (%s)%s", view.active_mode, view.state,
                     "" if view.present else " — mushishi-gpud is not on the bus",
                     extra={"MUSHISHI_MODE": view.active_mode or "unknown"})
            self.view = view
            self._on_change(view)

    def _view_from_properties(self) -> GpuView:
        return GpuView(present=True, active_mode=self._properties.get("ActiveMode") or None,
                       state=self._properties.get("State") or None)

    async def _run(self) -> None:
        warned = False
        while True:
            try:
                bus = MessageBus(bus_address=self._bus_address, bus_type=BusType.SYSTEM)
                await asyncio.wait_for(bus.connect(), CALL_TIMEOUT_S)
            except Exception as error:  # no bus at all, or not reachable
                if not warned:
                    log.warning("cannot reach the system bus (%s); routing by health probes "
                                "alone until it is back", error)
                    warned = True
                self._publish(GPU_ABSENT)
                self.connected.set()
                await asyncio.sleep(RECONNECT_S)
                continue
            warned = False
            self._bus = bus
            try:
                bus.add_message_handler(self._on_message)
                for rule in (
                    f"type='signal',sender='{_DBUS}',interface='{_DBUS}',"
                    f"member='NameOwnerChanged',arg0='{dbus_names.BUS_NAME}'",
                    f"type='signal',sender='{dbus_names.BUS_NAME}',"
                    f"path='{dbus_names.OBJECT_PATH}'",
                ):
                    await self._call(_DBUS, "/org/freedesktop/DBus", _DBUS, "AddMatch", "s",
                                     [rule])
                await self._load()
                self.connected.set()
                await bus.wait_for_disconnect()
            except Exception as error:  # any bus failure means: reconnect
                log.warning("lost the system bus (%s); reconnecting", error)
            finally:
                self._bus = None
                with contextlib.suppress(Exception):
                    bus.disconnect()
            self._publish(GPU_ABSENT)
            await asyncio.sleep(RECONNECT_S)

    async def _call(self, destination: str, path: str, interface: str, member: str,
                    signature: str = "", body: list[Any] | None = None,
                    wait_s: float = CALL_TIMEOUT_S) -> Message:
        bus = self._bus
        if bus is None:
            raise GpuModeError("org.freedesktop.DBus.Error.NoServer", "not connected to the bus")
        reply = await asyncio.wait_for(bus.call(Message(
            destination=destination, path=path, interface=interface, member=member,
            signature=signature, body=body or [])), wait_s)
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body else ""
            raise GpuModeError(reply.error_name or "unknown", str(text))
        return reply

    async def _load(self) -> None:
        """Read every property, or mark gpud absent."""
        has_owner = await self._call(_DBUS, "/org/freedesktop/DBus", _DBUS, "NameHasOwner",
                                     "s", [dbus_names.BUS_NAME])
        if not has_owner.body[0]:
            self._properties = {}
            self._publish(GPU_ABSENT)
            return
        try:
            reply = await self._call(dbus_names.BUS_NAME, dbus_names.OBJECT_PATH, _PROPERTIES,
                                     "GetAll", "s", [dbus_names.INTERFACE])
        except GpuModeError as error:
            log.warning("mushishi-gpud is on the bus but GetAll failed: %s", error)
            self._publish(GPU_ABSENT)
            return
        self._properties = {key: variant.value for key, variant in reply.body[0].items()}
        self._publish(self._view_from_properties())

    def _schedule_load(self) -> None:
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.create_task(self._load_quietly())

    async def _load_quietly(self) -> None:
        try:
            await self._load()
        except Exception as error:  # a failed read must not stop following
            log.warning("reading mushishi-gpud's properties failed: %s", error)

    def _on_message(self, message: Message) -> None:
        if message.message_type != MessageType.SIGNAL:
            return
        if message.member == "NameOwnerChanged" and message.body[0] == dbus_names.BUS_NAME:
            if message.body[2]:
                self._schedule_load()
            else:
                self._properties = {}
                self._publish(GPU_ABSENT)
        elif message.member == "PropertiesChanged" and message.body[0] == dbus_names.INTERFACE:
            for key, variant in message.body[1].items():
                self._properties[key] = variant.value
            if message.body[2]:
                self._schedule_load()
            if self._properties:
                self._publish(self._view_from_properties())
        elif message.member == "ModeChanged" and message.interface == dbus_names.INTERFACE:
            self._properties["ActiveMode"] = message.body[1]
            self._publish(self._view_from_properties())

    # -- calls the router makes -----------------------------------------------------------
    async def switch_mode(self, mode: str, wait_s: float, force: bool = False) -> None:
        """Ask gpud to switch to `mode` (a switch can take minutes); raise GpuModeError if it
        refuses, TimeoutError if it does not answer within `wait_s`."""
        await self._call(dbus_names.BUS_NAME, dbus_names.OBJECT_PATH, dbus_names.INTERFACE,
                         "SwitchMode", "sb", [mode, force], wait_s=wait_s)

    async def busy(self) -> list[str]:
        """gpud's reasons the GPU is busy (empty when idle)."""
        reply = await self._call(dbus_names.BUS_NAME, dbus_names.OBJECT_PATH,
                                 dbus_names.INTERFACE, "Busy")
        return list(reply.body[0])
