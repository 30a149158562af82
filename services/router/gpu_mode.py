"""Follows the GPU mode for routing (DESIGN.md §6): the shared io.mushishi.GpuMode1 client,
kept connected.

It watches the name's owner, reads every property when gpud appears, then follows
PropertiesChanged and ModeChanged. When gpud is not on the bus (or there is no bus), the
view is `GPU_ABSENT` and the router falls back to health probing alone; a lost bus is
reconnected every RECONNECT_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from mushishi.services.router.core import GPU_ABSENT, GpuView
from mushishi.shared import bus as dbus
from mushishi.shared import dbus_names
from mushishi.shared.bus import BusError
from mushishi.shared.gpumode import GpuModeClient, GpuModeProperties
from mushishi.shared.tasks import cancel_and_wait

log = logging.getLogger("mushishi.router.gpu_mode")

RECONNECT_S = 5.0
CALL_TIMEOUT_S = 5.0


class GpuModeFollower:
    """Keeps `view` current and calls `on_change(view)` whenever it changes."""

    def __init__(self, on_change: Callable[[GpuView], None], *,
                 bus_address: str | None = None) -> None:
        self._on_change = on_change
        self._bus_address = bus_address
        self._client: GpuModeClient | None = None
        self._properties: GpuModeProperties | None = None  # None: gpud not read (absent)
        self.view: GpuView = GPU_ABSENT
        self._task: asyncio.Task[None] | None = None
        self._refresh: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()  # set once the first bus connection is made

    def start(self) -> None:
        """Start following the bus in the background."""
        self._task = asyncio.create_task(self._run(), name="gpu-mode-follower")

    async def close(self) -> None:
        """Stop following and disconnect."""
        if self._task is not None:
            await cancel_and_wait(self._task)
        if self._client is not None:
            self._client.close()

    def _publish(self, view: GpuView) -> None:
        if view != self.view:
            log.info("GPU mode: %s (%s)%s", view.active_mode, view.state,
                     "" if view.present else " — mushishi-gpud is not on the bus",
                     extra={"MUSHISHI_MODE": view.active_mode or "unknown"})
            self.view = view
            self._on_change(view)

    def _show(self, properties: GpuModeProperties | None) -> None:
        self._properties = properties
        if properties is None:
            self._publish(GPU_ABSENT)
        else:
            self._publish(GpuView(present=True, active_mode=properties.active_mode or None,
                                  state=properties.state or None,
                                  last_switch_reason=properties.last_switch_reason or None))

    async def _run(self) -> None:
        warned = False
        while True:
            try:
                client = GpuModeClient(await asyncio.wait_for(
                    dbus.connect(self._bus_address), CALL_TIMEOUT_S), timeout_s=CALL_TIMEOUT_S)
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
            self._client = client
            try:
                await client.subscribe(self._mode_changed, self._properties_changed)
                owner = await dbus.watch_name_owner(client.bus, dbus_names.BUS_NAME,
                                                    self._owner_changed)
                if owner.owner:
                    await self._load()
                else:
                    self._show(None)
                self.connected.set()
                await client.bus.wait_for_disconnect()
            except Exception as error:  # any bus failure means: reconnect
                log.warning("lost the system bus (%s); reconnecting", error)
            finally:
                self._client = None
                with contextlib.suppress(Exception):
                    client.close()
            self._show(None)
            await asyncio.sleep(RECONNECT_S)

    async def _load(self) -> None:
        """Read every property, or mark gpud absent."""
        client = self._connected()
        try:
            properties = await client.properties()
        except BusError as error:
            if not error.no_owner:
                log.warning("mushishi-gpud is on the bus but GetAll failed: %s",
                            error.one_line())
            self._show(None)
            return
        self._show(properties)

    def _schedule_load(self) -> None:
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.create_task(self._load_quietly())

    async def _load_quietly(self) -> None:
        try:
            await self._load()
        except Exception as error:  # a failed read must not stop following
            log.warning("reading mushishi-gpud's properties failed: %s", error)

    def _owner_changed(self, owner: str) -> None:
        if owner:
            self._schedule_load()
        else:
            self._show(None)

    def _properties_changed(self, changed: dict[str, Any], invalidated: list[str]) -> None:
        properties = (self._properties or GpuModeProperties()).changed(changed)
        if invalidated:
            self._schedule_load()
        if changed or self._properties is not None:
            self._show(properties)

    def _mode_changed(self, _old: str, new: str) -> None:
        self._show((self._properties or GpuModeProperties()).changed({"ActiveMode": new}))

    def _connected(self) -> GpuModeClient:
        if self._client is None:
            raise BusError(dbus_names.DBUS_ERROR_NO_SERVER, "not connected to the bus")
        return self._client

    # -- calls the router makes -----------------------------------------------------------
    async def switch_mode(self, mode: str, reason: str, wait_s: float) -> None:
        """Ask gpud to switch to `mode` for `reason` (LastSwitchReason); raise BusError if it
        refuses, TimeoutError if it does not answer within `wait_s`."""
        await self._connected().switch(mode, False, reason=reason, timeout_s=wait_s)
