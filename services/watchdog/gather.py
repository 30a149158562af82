"""Adapters that gather the watchdog's facts: restic, files, statvfs, systemd and gpud over
D-Bus, the CPU floor and the router over HTTP. Each returns a value, `Missing` or `Failed`
(see checks.py) and never raises for the source's own trouble.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from mushishi.services.backup.core import Fatal
from mushishi.services.backup.repository import access
from mushishi.services.backup.restic import first_error_line, parse_snapshot_times
from mushishi.services.watchdog.checks import (
    DiskUsage,
    Failed,
    GpuReading,
    Missing,
    Source,
    UnitState,
)
from mushishi.shared import dbus_names
from mushishi.shared.config import MushishiSettings

log = logging.getLogger("mushishi.watchdog.gather")

PROPERTIES_INTERFACE = "org.freedesktop.DBus.Properties"
SERVICE_INTERFACE = "org.freedesktop.systemd1.Service"
_NO_OWNER_ERRORS = ("org.freedesktop.DBus.Error.ServiceUnknown",
                    "org.freedesktop.DBus.Error.NameHasNoOwner")


# -- files ---------------------------------------------------------------------------------

def json_file(path: Path, missing: str) -> Source[dict[str, Any]]:
    """A JSON result file; `missing` says what its absence means."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Missing(missing)
    except (OSError, ValueError) as error:
        return Failed(f"cannot read {path}: {error}")
    if not isinstance(data, dict):
        return Failed(f"{path} does not hold a JSON object")
    return data


def bench_rows(path: Path) -> Source[list[dict[str, str]]]:
    """Rows of the `mushishi bench` CSV."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError:
        return Missing(f"no bench results at {path} (run `mushishi bench`)")
    except (OSError, csv.Error, UnicodeDecodeError) as error:
        return Failed(f"cannot read {path}: {error}")
    if not rows:
        return Missing(f"{path} has no result rows yet")
    if "regression" not in rows[0] or "target" not in rows[0]:
        return Failed(f"{path} lacks the target/regression columns of `mushishi bench`")
    return rows


def disk_usage(mount: str, statvfs: Callable[[str], os.statvfs_result]) -> Source[DiskUsage]:
    """statvfs of a configured mount."""
    try:
        result = statvfs(mount)
    except FileNotFoundError:
        return Failed(f"{mount} does not exist (watchdog.disk_mounts)")
    except OSError as error:
        return Failed(f"statvfs {mount}: {error.strerror or error}")
    return DiskUsage(result.f_blocks * result.f_frsize, result.f_bfree * result.f_frsize,
                     result.f_bavail * result.f_frsize)


# -- restic --------------------------------------------------------------------------------

async def snapshot_times(settings: MushishiSettings, *, environ: Mapping[str, str],
                         dotenv: Mapping[str, str | None], limit_s: float
                         ) -> Source[list[datetime]]:
    """Times of the repository's snapshots, from restic itself (no lock, no cache)."""
    if not settings.backup.sets:
        return Failed("no [[backup.sets]] declared: nothing is backed up")
    try:
        repo = access(settings.backup, environ=environ, dotenv=dotenv, cache=False)
    except Fatal as error:
        return Failed(str(error))
    result = await repo.processes.run(repo.restic.snapshots(tags=settings.backup.tags),
                                      limit_s=limit_s)
    if result.timed_out:
        return Failed(f"restic snapshots did not answer within {limit_s:.0f}s")
    if result.returncode != 0:
        return Failed(f"restic snapshots on {settings.backup.repository} exited "
                      f"{result.returncode}: {first_error_line(result.stderr)}")
    try:
        return parse_snapshot_times(result.stdout)
    except (ValueError, KeyError, TypeError) as error:
        return Failed(f"cannot parse restic snapshots output: {error}")


# -- D-Bus ---------------------------------------------------------------------------------

async def connect_system_bus(address: str | None = None) -> MessageBus | Failed:
    """The system bus ($DBUS_SYSTEM_BUS_ADDRESS is honoured), or why not."""
    try:
        bus = MessageBus(bus_address=address) if address else MessageBus(
            bus_type=BusType.SYSTEM)
        return await bus.connect()
    except Exception as error:  # dbus-fast raises several types (OSError, AuthError…)
        return Failed(f"cannot connect to the system bus: {error}")


async def _call(bus: MessageBus, destination: str, path: str, interface: str, member: str,
                signature: str = "", body: Sequence[Any] = ()) -> Message:
    return await bus.call(Message(destination=destination, path=path, interface=interface,
                                  member=member, signature=signature, body=list(body)))


def _error_text(reply: Message) -> str:
    detail = reply.body[0] if reply.body else ""
    return f"{reply.error_name}: {detail}"


async def get_all(bus: MessageBus, destination: str, path: str, interface: str
                  ) -> dict[str, Any] | Message:
    """Properties.GetAll as plain values, or the error reply."""
    reply = await _call(bus, destination, path, PROPERTIES_INTERFACE, "GetAll", "s",
                        [interface])
    if reply.message_type == MessageType.ERROR:
        return reply
    return {name: variant.value for name, variant in reply.body[0].items()}


async def _unit_properties(bus: MessageBus, unit: str) -> dict[str, Any] | str:
    reply = await _call(bus, dbus_names.SYSTEMD_BUS_NAME, dbus_names.SYSTEMD_OBJECT_PATH,
                        dbus_names.SYSTEMD_MANAGER_INTERFACE, "LoadUnit", "s", [unit])
    if reply.message_type == MessageType.ERROR:
        return _error_text(reply)
    path = reply.body[0]
    props = await get_all(bus, dbus_names.SYSTEMD_BUS_NAME, path,
                          dbus_names.SYSTEMD_UNIT_INTERFACE)
    if isinstance(props, Message):
        return _error_text(props)
    if unit.endswith(".service"):
        service = await get_all(bus, dbus_names.SYSTEMD_BUS_NAME, path, SERVICE_INTERFACE)
        if isinstance(service, dict):
            props.update({f"Service.{k}": v for k, v in service.items()})
    return props


async def unit_state(bus: MessageBus | Failed, unit: str) -> Source[UnitState]:
    """What systemd's own API says about `unit` (and its .socket, if it has one)."""
    if isinstance(bus, Failed):
        return bus
    socket_active = None
    try:
        props = await _unit_properties(bus, unit)
        if isinstance(props, str):
            return Failed(f"systemd does not answer for {unit}: {props}")
        if unit.endswith(".service"):
            socket = unit.removesuffix(".service") + ".socket"
            socket_props = await _unit_properties(bus, socket)
            if isinstance(socket_props, dict) and socket_props.get("LoadState") == "loaded":
                socket_active = socket_props.get("ActiveState") == "active"
    except Exception as error:  # the bus went away mid-call
        return Failed(f"systemd D-Bus call for {unit} failed: {error}")
    return UnitState(str(props.get("LoadState", "")), str(props.get("ActiveState", "")),
                     str(props.get("SubState", "")), str(props.get("Service.Result", "")),
                     socket_active)


async def unit_failure_summary(bus: MessageBus | Failed, unit: str) -> str:
    """One line on how a unit failed: its state, result and main process status."""
    if isinstance(bus, Failed):
        return f"{unit} failed ({bus.reason})"
    try:
        props = await _unit_properties(bus, unit)
    except Exception as error:
        return f"{unit} failed (systemd did not say how: {error})"
    if isinstance(props, str):
        return f"{unit} failed (systemd did not say how: {props})"
    parts = [f"{unit} is {props.get('ActiveState')} ({props.get('SubState')})"]
    result = props.get("Service.Result")
    if result:
        parts.append(f"result {result}")
    code, status = props.get("Service.ExecMainCode"), props.get("Service.ExecMainStatus")
    if code == 1:
        parts.append(f"main process exited with status {status}")
    elif code in (2, 3):
        parts.append(f"main process killed by signal {status}")
    return ", ".join(parts)


async def gpu_reading(bus: MessageBus | Failed) -> Source[GpuReading]:
    """gpud's GPU properties (io.mushishi.GpuMode1), or Missing when gpud is not on the bus."""
    if isinstance(bus, Failed):
        return bus
    try:
        props = await get_all(bus, dbus_names.BUS_NAME, dbus_names.OBJECT_PATH,
                              dbus_names.INTERFACE)
    except Exception as error:
        return Failed(f"reading {dbus_names.BUS_NAME} failed: {error}")
    if isinstance(props, Message):
        if props.error_name in _NO_OWNER_ERRORS:
            return Missing(f"gpud ({dbus_names.BUS_NAME}) is not on the system bus")
        return Failed(f"reading {dbus_names.BUS_NAME} failed: {_error_text(props)}")
    temperature = props.get("GpuTemperatureC")
    throttled = props.get("GpuThrottled")
    return GpuReading(int(temperature) if temperature is not None else None,
                      bool(throttled) if throttled is not None else None,
                      str(props.get("State", "")), str(props.get("StateReason", "")))


# -- HTTP ----------------------------------------------------------------------------------

def http_host(host: str) -> str:
    """An address to connect to for a listen address (0.0.0.0 means this machine)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


async def served_models(session: aiohttp.ClientSession, url: str, limit_s: float
                        ) -> Source[list[str]]:
    """Model names listed by an OpenAI-compatible GET /v1/models."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=limit_s),
                               allow_redirects=False) as response:
            if response.status != 200:
                return Failed(f"GET {url} answered {response.status}")
            data = await response.json(content_type=None)
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as error:
        return Failed(f"GET {url} failed: {type(error).__name__}: {error}")
    names: list[str] = []
    for entry in (data.get("data") or []) if isinstance(data, dict) else []:
        if isinstance(entry, dict) and entry.get("id"):
            names.append(str(entry["id"]))
    for entry in (data.get("models") or []) if isinstance(data, dict) else []:
        if isinstance(entry, dict):
            names += [str(entry[k]) for k in ("name", "model") if entry.get(k)]
    return sorted(set(names))


async def router_status(socket_path: str | None, limit_s: float) -> Source[dict[str, Any]]:
    """The router's GET /status over its unix socket."""
    if socket_path is None:
        return Missing("router.listen has no unix: address to read /status from")
    connector = aiohttp.UnixConnector(path=socket_path)
    try:
        async with aiohttp.ClientSession(connector=connector) as session, session.get(
                "http://localhost/status", timeout=aiohttp.ClientTimeout(total=limit_s)
        ) as response:
            if response.status != 200:
                return Failed(f"router GET /status answered {response.status}")
            data = await response.json(content_type=None)
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as error:
        cause = error.__cause__ or error
        if isinstance(cause, FileNotFoundError):
            return Missing(f"the router's socket {socket_path} does not exist")
        return Missing(f"router not answering on {socket_path}: {type(error).__name__}: "
                       f"{error}")
    if not isinstance(data, dict):
        return Failed("router /status is not a JSON object")
    return data


# -- journal -------------------------------------------------------------------------------

JOURNALCTL_PATHS = ("/usr/bin/journalctl", "/bin/journalctl")


def find_journalctl() -> str:
    """journalctl at its fixed path (never $PATH)."""
    for candidate in JOURNALCTL_PATHS:
        if Path(candidate).is_file():
            return candidate
    return JOURNALCTL_PATHS[0]


async def journal_tail(journalctl: str, unit: str, lines: int, limit_s: float) -> list[str]:
    """The last `lines` journal lines of `unit` (systemd's own lines about it included)."""
    argv = [journalctl, "--no-pager", "--quiet", "--output=short-iso", f"--lines={lines}",
            f"--unit={unit}"]
    try:
        child = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={"LC_ALL": "C.UTF-8", "SYSTEMD_COLORS": "0"})
    except OSError as error:
        return [f"(cannot run {journalctl}: {error.strerror or error})"]
    try:
        stdout, stderr = await asyncio.wait_for(child.communicate(), timeout=limit_s)
    except TimeoutError:
        child.kill()
        await child.wait()
        return [f"(journalctl did not answer within {limit_s:.0f}s)"]
    text = stdout.decode("utf-8", "replace").splitlines()
    if child.returncode != 0 and not text:
        return [f"(journalctl exited {child.returncode}: "
                f"{stderr.decode('utf-8', 'replace').strip()[:200]})"]
    return text[-lines:]
