"""io.mushishi.GpuMode1 on a real dbus-daemon: the checked-in introspection XML, holds that
end with their holder's connection, and refusals as named D-Bus errors.

Two connections per test, as on the system bus: gpud's own and a client's. systemd is not
on this bus; the manager is started on a state of its own (the booted-systemd tests in
tests/system/ cover switching through systemd).
"""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from mushishi.services.gpud import core
from mushishi.services.gpud.app import GpuModeManager
from mushishi.services.gpud.dbus_api import GpuModeInterface, export
from mushishi.services.gpud.metrics import GpudMetrics
from mushishi.shared import dbus_names
from mushishi.shared.bus import BusError
from mushishi.shared.config import load_settings
from mushishi.shared.gpu import GpuSnapshot, SimulatedProbe
from mushishi.shared.gpumode import GpuModeClient
from mushishi.shared.metrics import new_registry
from mushishi.shared.systemd import SystemdClient
from tests.paths import EXAMPLE_CONFIG, REPO

XML = REPO / "docs" / "io.mushishi.GpuMode1.xml"


@pytest.fixture
async def gpud(private_bus: str) -> AsyncIterator[GpuModeManager]:
    """gpud's manager and interface on the private bus, in mode forensic, ready."""
    settings = load_settings(EXAMPLE_CONFIG)
    manager = GpuModeManager(settings, SimulatedProbe("/nonexistent"),
                             GpudMetrics(new_registry("gpud"), settings.modes))
    bus = await MessageBus(bus_address=private_bus).connect()
    manager.bus = bus
    manager.systemd = SystemdClient(bus)
    manager.mode_state = core.ModeState(active_mode="forensic", state=core.READY)
    manager.snapshot = GpuSnapshot(total_mib=32607, used_mib=28500, util_percent=93,
                                   temperature_c=71, power_w=431.5)
    await manager.export()
    yield manager
    bus.disconnect()


def _interface(xml: str) -> ET.Element:
    root = ET.fromstring(xml)
    (node,) = [i for i in root.iter("interface") if i.get("name") == dbus_names.INTERFACE]
    return node


def _shape(node: ET.Element) -> list[tuple[str, ...]]:
    """Members, argument names/types/directions and property access, in a stable order."""
    shape = []
    for member in node:
        args = tuple(f"{a.get('name')}:{a.get('type')}:{a.get('direction', '')}"
                     for a in member.iter("arg"))
        shape.append((member.tag, member.get("name") or "", member.get("type") or "",
                      member.get("access") or "", *args))
    return sorted(shape)


async def test_live_interface_matches_the_checked_in_xml(gpud: GpuModeManager,
                                                         private_bus: str) -> None:
    client = await MessageBus(bus_address=private_bus).connect()
    try:
        reply = await client.call(Message(
            destination=dbus_names.BUS_NAME, path=dbus_names.OBJECT_PATH,
            interface=dbus_names.INTROSPECTABLE_INTERFACE, member="Introspect"))
    finally:
        client.disconnect()
    assert reply is not None and reply.message_type == MessageType.METHOD_RETURN
    live = _shape(_interface(reply.body[0]))
    assert live == _shape(_interface(XML.read_text())), (
        "docs/io.mushishi.GpuMode1.xml differs from the live interface")
    names = {entry[1] for entry in live}
    assert {"ActiveMode", "State", "Modes", "Holds", "VramTotalMiB", "VramUsedMiB",
            "GpuTemperatureC", "GpuPowerW", "GpuUtilPercent", "GpuThrottled", "StateReason",
            "SwitchMode", "Busy", "HoldMode", "ReleaseHold", "ModeChanged"} <= names


async def test_properties_read_from_a_second_connection(gpud: GpuModeManager,
                                                        private_bus: str) -> None:
    client = await GpuModeClient.connect(private_bus)
    try:
        props = await client.properties()
    finally:
        client.close()
    assert props.active_mode == "forensic" and props.state == "ready"
    assert props.modes == ("agent", "audio", "creative", "forensic", "off")
    assert (props.vram_used_mib, props.vram_total_mib) == (28500, 32607)
    assert (props.util_percent, props.temperature_c) == (93, 71)
    assert props.power_w == 431.5 and props.throttled is False
    assert props.holds == () and props.state_reason == ""


async def test_hold_ends_when_the_holders_connection_goes_away(gpud: GpuModeManager,
                                                               private_bus: str) -> None:
    holder = await GpuModeClient.connect(private_bus)
    watcher = await GpuModeClient.connect(private_bus)
    try:
        await watcher.watch()
        cookie = await holder.hold("forensic", "report.sh", "client job")
        assert cookie > 0
        assert await watcher.get("Holds") == [["forensic", "report.sh", "client job"]]
        kind, changed = await asyncio.wait_for(watcher.events.get(), 5)
        assert (kind, changed) == ("PropertiesChanged",
                                   {"Holds": [["forensic", "report.sh", "client job"]]})
        holder.close()
        kind, changed = await asyncio.wait_for(watcher.events.get(), 5)
        assert (kind, changed) == ("PropertiesChanged", {"Holds": []})
        assert gpud.mode_state.holds == ()
    finally:
        watcher.close()


async def test_properties_changed_carries_only_the_values_that_changed(
        gpud: GpuModeManager, private_bus: str) -> None:
    watcher = await GpuModeClient.connect(private_bus)
    try:
        await watcher.watch()
        gpud.reload(gpud.settings)  # the same modes: nothing to announce
        modes = {name: mode for name, mode in gpud.settings.modes.items() if name != "audio"}
        gpud.reload(gpud.settings.model_copy(update={"modes": modes}))
        kind, changed = await asyncio.wait_for(watcher.events.get(), 5)
        assert (kind, changed) == ("PropertiesChanged",
                                   {"Modes": ["agent", "creative", "forensic", "off"]})
        assert watcher.events.empty()
    finally:
        watcher.close()


async def test_root_may_release_a_hold_it_does_not_own(gpud: GpuModeManager,
                                                        private_bus: str) -> None:
    # Tests run as root; a non-root caller gets NotHolder (tests/unit/gpud/test_core.py).
    holder = await GpuModeClient.connect(private_bus)
    admin = await GpuModeClient.connect(private_bus)
    try:
        cookie = await holder.hold("forensic", "stuck job", "")
        await admin.release(cookie)
        assert await admin.get("Holds") == []
    finally:
        holder.close()
        admin.close()


async def test_release_by_the_holder_and_errors_by_name(gpud: GpuModeManager,
                                                        private_bus: str) -> None:
    client = await GpuModeClient.connect(private_bus)
    try:
        cookie = await client.hold("forensic", "job", "")
        await client.release(cookie)
        assert await client.get("Holds") == []
        with pytest.raises(BusError) as unknown:
            await client.release(cookie)
        assert unknown.value.name == dbus_names.ERROR_UNKNOWN_HOLD
        with pytest.raises(BusError) as inactive:
            await client.hold("creative", "job", "")
        assert inactive.value.name == dbus_names.ERROR_NOT_ACTIVE
        assert "the active mode is forensic" in inactive.value.text
        with pytest.raises(BusError) as unknown_mode:
            await client.switch("gaming", False)
        assert unknown_mode.value.name == dbus_names.ERROR_UNKNOWN_MODE
        await client.hold("forensic", "job", "keep it")
        with pytest.raises(BusError) as held:
            await client.switch("creative", False)
        assert held.value.name == dbus_names.ERROR_HELD
        assert held.value.text == "mode forensic is held: job holds forensic (keep it)"
    finally:
        client.close()
    metrics = gpud.metrics
    assert metrics.refusals.labels(reason="held")._value.get() == 1
    assert metrics.refusals.labels(reason="not_active")._value.get() == 1


async def test_second_gpud_cannot_take_the_name(gpud: GpuModeManager, private_bus: str
                                                ) -> None:
    bus = await MessageBus(bus_address=private_bus).connect()
    try:
        with pytest.raises(RuntimeError, match="another mushishi-gpud is running"):
            await export(bus, GpuModeInterface(gpud))
    finally:
        bus.disconnect()


async def test_switch_with_a_reason_shows_it_as_last_switch_reason(
        gpud: GpuModeManager, private_bus: str) -> None:
    # No systemd on this bus: the isolate fails, after the switch started for its reason
    # (forced, so that no busy probe asks systemd which tenants run).
    client = await GpuModeClient.connect(private_bus)
    try:
        assert await client.get("LastSwitchReason") == ""
        with pytest.raises(BusError) as bad:
            await client.switch("creative", True, reason="because")
        assert bad.value.name == dbus_names.ERROR_BAD_REASON
        assert "request:profile=<profile>" in bad.value.text
        assert gpud.mode_state.state == core.READY  # refused before anything started
        with pytest.raises(BusError) as failed:
            await client.switch("creative", True, reason="request:profile=artist")
        assert failed.value.name == dbus_names.ERROR_SWITCH_FAILED
        props = await client.properties()
        assert props.last_switch_reason == "request:profile=artist"
        with pytest.raises(BusError):
            await client.switch("creative", True)  # plain SwitchMode: a person
        assert await client.get("LastSwitchReason") == "manual"
    finally:
        client.close()
