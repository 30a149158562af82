"""The one client of io.mushishi.GpuMode1 (DESIGN.md §6), typed: gpud's properties, its
methods and its signals.

`mushishi mode` and `mushishi hold`, `mushishi status`, the watchdog and the bench use it
as it is; the router wraps it in a follower that reconnects (services/router/gpu_mode.py).
A refusal raises `BusError` with gpud's error name (dbus_names.ERROR_*) and its text.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from mushishi.shared import bus as dbus
from mushishi.shared import dbus_names
from mushishi.shared.bus import BusError
from mushishi.shared.readings import Reading, down, error, ok

MODE_CHANGED_MATCH = dbus.signal_rule(sender=dbus_names.BUS_NAME,
                                      interface=dbus_names.INTERFACE, member="ModeChanged",
                                      path=dbus_names.OBJECT_PATH)
PROPERTIES_CHANGED_MATCH = dbus.signal_rule(sender=dbus_names.BUS_NAME,
                                            interface=dbus_names.PROPERTIES_INTERFACE,
                                            member="PropertiesChanged",
                                            path=dbus_names.OBJECT_PATH,
                                            arg0=dbus_names.INTERFACE)


@dataclass(frozen=True, slots=True)
class Hold:
    """One entry of the Holds property."""

    mode: str
    holder: str
    reason: str


@dataclass(frozen=True, slots=True)
class GpuModeProperties:
    """gpud's properties; a reading this gpud does not expose is None."""

    active_mode: str = ""
    state: str = ""
    state_reason: str = ""
    progress: str = ""
    modes: tuple[str, ...] = ()
    holds: tuple[Hold, ...] = ()
    last_switch_reason: str | None = None  # None: a gpud from before LastSwitchReason
    vram_total_mib: int | None = None
    vram_used_mib: int | None = None
    temperature_c: int | None = None
    power_w: float | None = None
    util_percent: int | None = None
    throttled: bool | None = None

    @classmethod
    def from_dbus(cls, values: Mapping[str, Any]) -> GpuModeProperties:
        """From property values by D-Bus name (GetAll)."""
        return cls().changed(values)

    def changed(self, values: Mapping[str, Any]) -> GpuModeProperties:
        """These properties with some changed (PropertiesChanged), by D-Bus name."""
        fields = {}
        for name, value in values.items():
            field = _FIELDS.get(name)
            if field is not None:
                fields[field] = _from_dbus(field, value)
        return dataclasses.replace(self, **fields)

    def to_dbus(self) -> dict[str, Any]:
        """By D-Bus name, as plain data (what `mushishi mode --json` prints)."""
        values = {}
        for name, field in _FIELDS.items():
            value = getattr(self, field)
            if value is None:
                continue
            if field == "holds":
                value = [[hold.mode, hold.holder, hold.reason] for hold in value]
            elif field == "modes":
                value = list(value)
            values[name] = value
        return values


# D-Bus property name -> GpuModeProperties field.
_FIELDS = {
    "ActiveMode": "active_mode",
    "State": "state",
    "StateReason": "state_reason",
    "Progress": "progress",
    "Modes": "modes",
    "Holds": "holds",
    "LastSwitchReason": "last_switch_reason",
    "VramTotalMiB": "vram_total_mib",
    "VramUsedMiB": "vram_used_mib",
    "GpuTemperatureC": "temperature_c",
    "GpuPowerW": "power_w",
    "GpuUtilPercent": "util_percent",
    "GpuThrottled": "throttled",
}


def _from_dbus(field: str, value: Any) -> Any:
    if field == "modes":
        return tuple(str(mode) for mode in value)
    if field == "holds":
        return tuple(Hold(str(h[0]), str(h[1]), str(h[2])) for h in value if len(h) == 3)
    if field == "power_w":
        return float(value)
    if field == "throttled":
        return bool(value)
    if field in ("vram_total_mib", "vram_used_mib", "temperature_c", "util_percent"):
        return int(value)
    return str(value)


@dataclass(frozen=True, slots=True)
class SwitchOutcome:
    """How a switch the client waited for ended."""

    ok: bool
    mode: str
    reason: str
    seconds: float


class Subscription:
    """ModeChanged and PropertiesChanged of gpud's object, delivered to callbacks."""

    def __init__(self, bus: MessageBus, on_mode_changed: Callable[[str, str], None],
                 on_properties_changed: Callable[[dict[str, Any], list[str]], None]) -> None:
        self.bus = bus
        self._on_mode_changed = on_mode_changed
        self._on_properties_changed = on_properties_changed

    def handle(self, message: Message) -> bool:
        """Route one message (a dbus-fast message handler)."""
        if message.message_type != MessageType.SIGNAL or message.path != dbus_names.OBJECT_PATH:
            return False
        if message.interface == dbus_names.INTERFACE and message.member == "ModeChanged":
            self._on_mode_changed(str(message.body[0]), str(message.body[1]))
            return False
        changed, invalidated = dbus.properties_changed(message, dbus_names.INTERFACE)
        if changed or invalidated:
            self._on_properties_changed(changed, invalidated)
        return False

    def cancel(self) -> None:
        """Stop delivering."""
        self.bus.remove_message_handler(self.handle)
        dbus.remove_match(self.bus, MODE_CHANGED_MATCH)
        dbus.remove_match(self.bus, PROPERTIES_CHANGED_MATCH)


class GpuModeClient:
    """gpud's object on one bus connection. `timeout_s` bounds each call (None: as long as
    the bus daemon waits for a reply)."""

    def __init__(self, bus: MessageBus, *, timeout_s: float | None = None) -> None:
        self.bus = bus
        self.timeout_s = timeout_s
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._watching: Subscription | None = None

    @classmethod
    async def connect(cls, address: str | None = None, *,
                      timeout_s: float | None = None) -> GpuModeClient:
        """Connect to the system bus (or `address`)."""
        return cls(await dbus.connect(address), timeout_s=timeout_s)

    def close(self) -> None:
        """Disconnect."""
        self.bus.disconnect()

    async def _call(self, member: str, signature: str = "", body: list[Any] | None = None,
                    timeout_s: float | None = None) -> list[Any]:
        return await dbus.call(self.bus, dbus_names.BUS_NAME, dbus_names.OBJECT_PATH,
                               dbus_names.INTERFACE, member, signature, body or [],
                               timeout_s=timeout_s or self.timeout_s)

    # -- properties ------------------------------------------------------------------------
    async def properties(self) -> GpuModeProperties:
        """Every property."""
        return GpuModeProperties.from_dbus(await dbus.get_all(
            self.bus, dbus_names.BUS_NAME, dbus_names.OBJECT_PATH, dbus_names.INTERFACE,
            timeout_s=self.timeout_s))

    async def get(self, name: str) -> Any:
        """One property by its D-Bus name, as plain data."""
        return await dbus.get_property(self.bus, dbus_names.BUS_NAME, dbus_names.OBJECT_PATH,
                                       dbus_names.INTERFACE, name, timeout_s=self.timeout_s)

    # -- methods ---------------------------------------------------------------------------
    async def switch(self, mode: str, force: bool = False, *, reason: str | None = None,
                     timeout_s: float | None = None) -> None:
        """SwitchMode, or SwitchModeWithReason when `reason` says why (LastSwitchReason:
        `hold-then`, `idle`, `request:profile=P`; plain SwitchMode is `manual`): returns once
        the switch is under way (or raises the refusal)."""
        while not self.events.empty():  # what came before this switch is not about it
            self.events.get_nowait()
        if reason is None:
            await self._call("SwitchMode", "sb", [mode, force], timeout_s)
        else:
            await self._call("SwitchModeWithReason", "sbs", [mode, force, reason], timeout_s)

    async def busy(self) -> list[str]:
        """Busy(): one line per finding."""
        (lines,) = await self._call("Busy")
        return [str(line) for line in lines]

    async def hold(self, mode: str, holder: str, reason: str) -> int:
        """HoldMode: the cookie; the hold ends with this connection."""
        (cookie,) = await self._call("HoldMode", "sss", [mode, holder, reason])
        return int(cookie)

    async def release(self, cookie: int) -> None:
        """ReleaseHold."""
        await self._call("ReleaseHold", "u", [cookie])

    # -- signals ---------------------------------------------------------------------------
    async def subscribe(self, on_mode_changed: Callable[[str, str], None],
                        on_properties_changed: Callable[[dict[str, Any], list[str]], None]
                        ) -> Subscription:
        """Call back on ModeChanged(old, new) and on PropertiesChanged(changed values by
        D-Bus name, invalidated names) until the subscription is cancelled."""
        subscription = Subscription(self.bus, on_mode_changed, on_properties_changed)
        self.bus.add_message_handler(subscription.handle)
        await dbus.add_match(self.bus, MODE_CHANGED_MATCH)
        await dbus.add_match(self.bus, PROPERTIES_CHANGED_MATCH)
        return subscription

    async def watch(self) -> None:
        """Queue ("ModeChanged", (old, new)) and ("PropertiesChanged", changed) on `events`."""
        if self._watching is None:
            self._watching = await self.subscribe(
                lambda old, new: self.events.put_nowait(("ModeChanged", (old, new))),
                lambda changed, _invalidated: self.events.put_nowait(
                    ("PropertiesChanged", changed)))

    async def wait_switch(self, mode: str, on_progress: Callable[[str], None] | None = None,
                          clock: Callable[[], float] = time.monotonic) -> SwitchOutcome:
        """After SwitchMode (with watch() called before it): wait for ModeChanged to `mode`,
        or State=failed. Wrap it in asyncio.timeout() to bound the wait."""
        started = clock()
        props = await self.properties()
        if props.state != "switching":
            ok = props.active_mode == mode and props.state in ("ready", "off")
            return SwitchOutcome(ok, props.active_mode, props.state_reason, 0.0)
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


async def read_properties(client: GpuModeClient) -> Reading[GpuModeProperties]:
    """gpud's properties as a reading: `down` when gpud is not on the bus, `error` when it
    is and its answer is an error."""
    try:
        return ok(await client.properties())
    except BusError as caught:
        if caught.no_owner:
            return down(f"mushishi-gpud is not on the system bus ({dbus_names.BUS_NAME} has "
                        "no owner; `systemctl status mushishi-gpud`)")
        return error(f"reading {dbus_names.BUS_NAME} failed: {caught.one_line()}")
