"""Adapters that gather the watchdog's facts: restic, statvfs, systemd and gpud over D-Bus,
the CPU floor and the router over HTTP (the shared clients), the result files and the
tenants' published probes (the shared readers), the egress socket's mode. Each returns a
`Reading` (shared/readings.py) and never raises for the source's own trouble.
"""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import pwd
import stat
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from dbus_fast.aio import MessageBus

from mushishi.services.backup.core import Fatal
from mushishi.services.backup.repository import access
from mushishi.services.backup.restic import first_error_line, parse_snapshot_times
from mushishi.services.watchdog.checks import DiskUsage, EgressSocket, UnitState
from mushishi.shared import bus as dbus
from mushishi.shared.bus import BusError
from mushishi.shared.config import MushishiSettings
from mushishi.shared.gpumode import GpuModeClient, GpuModeProperties, read_properties
from mushishi.shared.local_http import served_models
from mushishi.shared.readings import Reading, error, missing, ok, within
from mushishi.shared.router_status import RouterStatus, read_status
from mushishi.shared.systemd import SystemdClient, UnitStatus
from mushishi.shared.tenant_confinement import TenantsLayer, read_tenants_layer

log = logging.getLogger("mushishi.watchdog.gather")


def disk_usage(mount: str, statvfs: Callable[[str], os.statvfs_result]) -> Reading[DiskUsage]:
    """statvfs of a configured mount."""
    try:
        result = statvfs(mount)
    except FileNotFoundError:
        return error(f"{mount} does not exist (watchdog.disk_mounts)")
    except OSError as caught:
        return error(f"statvfs {mount}: {caught.strerror or caught}")
    return ok(DiskUsage(result.f_blocks * result.f_frsize, result.f_bfree * result.f_frsize,
                        result.f_bavail * result.f_frsize))


# -- restic --------------------------------------------------------------------------------

async def snapshot_times(settings: MushishiSettings, *, environ: Mapping[str, str],
                         dotenv: Mapping[str, str | None], limit_s: float
                         ) -> Reading[list[datetime]]:
    """Times of the repository's snapshots, from restic itself (no lock, no cache)."""
    if not settings.backup.sets:
        return error("no [[backup.sets]] declared: nothing is backed up")
    try:
        repo = access(settings.backup, environ=environ, dotenv=dotenv, cache=False)
    except Fatal as caught:
        return error(str(caught))
    result = await repo.processes.run(repo.restic.snapshots(tags=settings.backup.tags),
                                      limit_s=limit_s)
    if result.timed_out:
        return error(f"restic snapshots did not answer within {limit_s:.0f}s")
    if result.returncode != 0:
        return error(f"restic snapshots on {settings.backup.repository} exited "
                     f"{result.returncode}: {first_error_line(result.stderr)}")
    try:
        return ok(parse_snapshot_times(result.stdout))
    except (ValueError, KeyError, TypeError) as caught:
        return error(f"cannot parse restic snapshots output: {caught}")


# -- D-Bus ---------------------------------------------------------------------------------

async def connect_system_bus(address: str | None = None) -> MessageBus | Reading[None]:
    """The system bus ($DBUS_SYSTEM_BUS_ADDRESS is honoured), or why not: the watchdog runs
    as a system unit, so no bus is a fault (an `error` reading), never a missing source."""
    try:
        return await dbus.connect(address)
    except Exception as caught:  # dbus-fast raises several types (OSError, AuthError…)
        return error(f"cannot connect to the system bus: {caught}")


async def unit_state(bus: MessageBus | Reading[None], unit: str) -> Reading[UnitState]:
    """What systemd's own API says about `unit` (and its .socket, if it has one)."""
    if isinstance(bus, Reading):
        return bus
    systemd = SystemdClient(bus)
    socket_active = None
    try:
        state = await systemd.unit(unit)
        if unit.endswith(".service"):
            socket = await systemd.unit(unit.removesuffix(".service") + ".socket")
            if socket.load_state == "loaded":
                socket_active = socket.active_state == "active"
    except BusError as caught:
        return error(f"systemd does not answer for {unit}: {caught.one_line()}")
    except Exception as caught:  # the bus went away mid-call
        return error(f"systemd D-Bus call for {unit} failed: {caught}")
    return ok(UnitState(state.load_state, state.active_state, state.sub_state, state.result,
                        socket_active))


def _failure_summary(unit: UnitStatus) -> str:
    parts = [f"{unit.name} is {unit.active_state} ({unit.sub_state})"]
    if unit.result:
        parts.append(f"result {unit.result}")
    if unit.exec_main_code == 1:
        parts.append(f"main process exited with status {unit.exec_main_status}")
    elif unit.exec_main_code in (2, 3):
        parts.append(f"main process killed by signal {unit.exec_main_status}")
    return ", ".join(parts)


async def unit_failure_summary(bus: MessageBus | Reading[None], unit: str) -> str:
    """One line on how a unit failed: its state, result and main process status."""
    if isinstance(bus, Reading):
        return f"{unit} failed ({bus.detail})"
    try:
        return _failure_summary(await SystemdClient(bus).unit(unit))
    except BusError as caught:
        return f"{unit} failed (systemd did not say how: {caught.one_line()})"
    except Exception as caught:
        return f"{unit} failed (systemd did not say how: {caught})"


async def gpu_reading(bus: MessageBus | Reading[None]) -> Reading[GpuModeProperties]:
    """gpud's properties (io.mushishi.GpuMode1); `down` when gpud is not on the bus."""
    if isinstance(bus, Reading):
        return bus
    return await read_properties(GpuModeClient(bus))


# -- HTTP ----------------------------------------------------------------------------------

async def models_served(host: str, port: int, limit_s: float) -> Reading[list[str]]:
    """Model names listed by the CPU floor's GET /v1/models."""
    return await within(limit_s, served_models(host, port),
                        "hung or loading? `systemctl status mushishi-cpu-floor`")


async def router_status(socket_path: str | None, limit_s: float) -> Reading[RouterStatus]:
    """The router's GET /status over its unix socket."""
    return await within(limit_s, read_status(socket_path),
                        "hung? `systemctl status mushishi-router`")


# -- sovereignty ---------------------------------------------------------------------------

async def tenants_layer(run_dir: Path, now: float) -> Reading[TenantsLayer]:
    """The tenants layer from their published probes (the router's reader; tmpfs, in a
    worker thread all the same)."""
    return ok(await asyncio.to_thread(read_tenants_layer, run_dir, now=now))


def egress_socket(path: str) -> Reading[EgressSocket]:
    """Owner, group and mode of the egress socket; `missing` when there is none."""
    try:
        info = Path(path).stat()
    except FileNotFoundError:
        return missing(f"no egress socket at {path} (router.egress_socket)")
    except OSError as caught:
        return error(f"cannot stat the egress socket {path}: {caught.strerror or caught}")
    if not stat.S_ISSOCK(info.st_mode):
        return error(f"{path} (router.egress_socket) is not a socket")
    return ok(EgressSocket(path, _name(pwd.getpwuid, info.st_uid),
                           _name(grp.getgrgid, info.st_gid), stat.S_IMODE(info.st_mode)))


def _name(lookup: Callable[[int], Any], ident: int) -> str:
    try:
        return str(lookup(ident)[0])
    except KeyError:
        return str(ident)


# -- journal -------------------------------------------------------------------------------

JOURNALCTL_PATHS = ("/usr/bin/journalctl", "/bin/journalctl")


def find_journalctl() -> str:
    """journalctl at its fixed path (never $PATH)."""
    for candidate in JOURNALCTL_PATHS:
        if Path(candidate).is_file():
            return candidate
    return JOURNALCTL_PATHS[0]
