"""Fixtures: a running router with its stand-ins, and a private D-Bus with a stand-in gpud."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mushishi.shared import dbus_names
from tests.integration.router.harness import Box, running_box
from tests.standins.bus import PrivateBus
from tests.standins.gpumode import GpuModeStandin


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[Box]:
    """The router (no gpud) with gpu, cpu and egress stand-ins, all healthy."""
    async with running_box(tmp_path) as running:
        yield running


@pytest.fixture
def private_bus() -> Iterator[PrivateBus]:
    """A real dbus-daemon of the test's own."""
    with PrivateBus() as bus:
        yield bus


@pytest.fixture
async def gpud(private_bus: PrivateBus) -> AsyncIterator[GpuModeStandin]:
    """A stand-in io.mushishi.GpuMode1 in forensic mode on the private bus."""
    service = GpuModeStandin(["forensic", "agent", "creative", "audio", "off"], "forensic")
    await service.connect(private_bus.address)
    assert dbus_names.BUS_NAME
    yield service
    service.disconnect()
