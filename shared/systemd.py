"""The one client of systemd's own D-Bus API (org.freedesktop.systemd1(5)).

Unit states for gpud (a mode's units and their jobs), `mushishi status` and the watchdog
(the always-on units and the timers), where a unit's environment comes from (`mushishi
status` names test-only switches and their source), isolating a mode target, and the
signals that reveal a switch made with `systemctl isolate` behind gpud's back:
JobNew/JobRemoved from the manager and PropertiesChanged from units.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from mushishi.shared import bus as dbus
from mushishi.shared.bus import BusError
from mushishi.shared.dbus_names import (
    PROPERTIES_INTERFACE,
    SYSTEMD_BUS_NAME,
    SYSTEMD_MANAGER_INTERFACE,
    SYSTEMD_OBJECT_PATH,
    SYSTEMD_SERVICE_INTERFACE,
    SYSTEMD_TIMER_INTERFACE,
    SYSTEMD_UNIT_INTERFACE,
    SYSTEMD_UNIT_PATH_PREFIX,
)

MANAGER_SIGNALS_MATCH = dbus.signal_rule(sender=SYSTEMD_BUS_NAME,
                                         interface=SYSTEMD_MANAGER_INTERFACE,
                                         path=SYSTEMD_OBJECT_PATH)
UNIT_PROPERTIES_MATCH = dbus.signal_rule(sender=SYSTEMD_BUS_NAME,
                                         interface=PROPERTIES_INTERFACE,
                                         member="PropertiesChanged",
                                         path_namespace=SYSTEMD_UNIT_PATH_PREFIX.rstrip("/"))
# systemd's "never" for a time in microseconds.
USEC_NEVER = (0, 2**64 - 1)


@dataclass(frozen=True, slots=True)
class UnitStatus:
    """What systemd says about one unit (service fields empty for other kinds of unit)."""

    name: str
    active_state: str = "inactive"
    sub_state: str = "dead"
    result: str = "success"
    status_text: str = ""
    job_type: str = ""  # the unit's pending job ("start", "stop", …), "" when none
    load_state: str = "loaded"
    exec_main_code: int | None = None    # CLD_EXITED (1), CLD_KILLED (2), CLD_DUMPED (3)
    exec_main_status: int | None = None  # the exit status or the signal


@dataclass(frozen=True, slots=True)
class TimerStatus:
    """A timer unit's state and its next and last elapse (µs since the epoch, None: never)."""

    name: str
    load_state: str
    active_state: str
    sub_state: str
    next_elapse_usec: int | None = None
    last_trigger_usec: int | None = None


@dataclass(frozen=True, slots=True)
class UnitEnvironment:
    """Where a service's environment comes from: its `Environment=` assignments (unit file
    and drop-ins merged, as systemd holds them), its `EnvironmentFile=`s, and the files that
    define the unit."""

    name: str
    environment: tuple[str, ...] = ()
    environment_files: tuple[str, ...] = ()
    fragment_path: str = ""
    drop_in_paths: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class JobEvent:
    """JobNew (result None) or JobRemoved (result: done, failed, canceled, …) for a unit."""

    unit: str
    job_id: int
    result: str | None


@dataclass(frozen=True, slots=True)
class UnitChange:
    """PropertiesChanged on a unit object: which unit, and the changed values."""

    unit: str
    changed: dict[str, Any]


def unit_path(name: str) -> str:
    """systemd's object path for a unit name (bus_label_escape)."""
    escaped = "".join(
        ch if ch.isascii() and (ch.isalnum() and not (i == 0 and ch.isdigit())) else
        f"_{ord(ch):02x}"
        for i, ch in enumerate(name)
    )
    return SYSTEMD_UNIT_PATH_PREFIX + escaped


def _usec(value: Any) -> int | None:
    return value if isinstance(value, int) and value not in USEC_NEVER else None


class SystemdClient:
    """Calls and signals of the systemd manager, on an existing bus connection."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self._paths: dict[str, str] = {}
        self._on_job: Callable[[JobEvent], None] | None = None
        self._on_change: Callable[[UnitChange], None] | None = None

    async def _manager(self, member: str, signature: str = "", body: Sequence[Any] = ()
                       ) -> list[Any]:
        return await dbus.call(self.bus, SYSTEMD_BUS_NAME, SYSTEMD_OBJECT_PATH,
                               SYSTEMD_MANAGER_INTERFACE, member, signature, body)

    async def _get(self, path: str, interface: str, names: Sequence[str]) -> dict[str, Any]:
        """Some properties of one object, read concurrently; one that errs is left out."""
        values = await asyncio.gather(
            *(dbus.get_property(self.bus, SYSTEMD_BUS_NAME, path, interface, name)
              for name in names), return_exceptions=True)
        found = {}
        for name, value in zip(names, values, strict=True):
            if isinstance(value, BusError):
                continue
            if isinstance(value, BaseException):
                raise value
            found[name] = value
        return found

    # -- signals -------------------------------------------------------------------------
    async def watch(self, units: Iterable[str], on_job: Callable[[JobEvent], None],
                    on_change: Callable[[UnitChange], None]) -> None:
        """Subscribe to the manager's signals and route those about `units` to callbacks."""
        self._paths = {unit_path(unit): unit for unit in units}
        self._on_job = on_job
        self._on_change = on_change
        self.bus.add_message_handler(self._dispatch)
        await dbus.add_match(self.bus, MANAGER_SIGNALS_MATCH)
        await dbus.add_match(self.bus, UNIT_PROPERTIES_MATCH)
        await self._manager("Subscribe")

    def rewatch(self, units: Iterable[str]) -> None:
        """Follow a new set of units (after a config reload)."""
        self._paths = {unit_path(unit): unit for unit in units}

    def _dispatch(self, msg: Message) -> bool:
        if msg.message_type != MessageType.SIGNAL:
            return False
        if msg.interface == SYSTEMD_MANAGER_INTERFACE and msg.path == SYSTEMD_OBJECT_PATH:
            if msg.member == "JobNew" and self._on_job is not None:
                job_id, _job, unit = msg.body
                if unit_path(unit) in self._paths:
                    self._on_job(JobEvent(unit, int(job_id), None))
            elif msg.member == "JobRemoved" and self._on_job is not None:
                job_id, _job, unit, result = msg.body
                if unit_path(unit) in self._paths:
                    self._on_job(JobEvent(unit, int(job_id), str(result)))
        elif msg.path in self._paths and self._on_change is not None:
            # The Unit interface's states and the Service interface's StatusText alike.
            changed, _invalidated = dbus.properties_changed(msg)
            if changed:
                self._on_change(UnitChange(self._paths[msg.path], changed))
        return False  # never swallow: other handlers (holds) may want the same signal

    # -- the manager -----------------------------------------------------------------------
    async def isolate(self, unit: str) -> str:
        """StartUnit(unit, "isolate"); returns the job's object path once it is queued."""
        (job,) = await self._manager("StartUnit", "ss", [unit, "isolate"])
        return str(job)

    async def pending_jobs(self, units: Iterable[str]) -> dict[str, str]:
        """Queued or running jobs on `units`: unit -> job type."""
        wanted = set(units)
        (jobs,) = await self._manager("ListJobs")
        return {str(unit): str(job_type) for _id, unit, job_type, _state, _jp, _up in jobs
                if unit in wanted}

    async def _rows(self, member: str, signature: str, body: Sequence[Any]
                    ) -> list[tuple[str, str, str, str, str, str]]:
        """(name, load, active, sub, path, job type) of each unit a List* call returns."""
        (rows,) = await self._manager(member, signature, body)
        return [(str(name), str(load), str(active), str(sub), str(path), str(job_type))
                for name, _desc, load, active, sub, _following, path, _job_id, job_type, _jp
                in rows]

    async def statuses(self, units: Iterable[str], *, every_status_text: bool = False
                       ) -> dict[str, UnitStatus]:
        """State and pending job of each unit (loaded on demand: one that does not exist
        reads `not-found`), in one call. The result and STATUS= text of services that are
        not running or have a job pending (why a tenant failed, what it is doing); with
        `every_status_text`, the STATUS= text of every loaded service instead."""
        rows = await self._rows("ListUnitsByNames", "as", [list(units)])

        def wanted(name: str, load: str, active: str, job_type: str) -> tuple[str, ...]:
            if not name.endswith(".service"):
                return ()
            if every_status_text:
                return ("StatusText",) if load == "loaded" else ()
            if active not in ("active", "reloading"):
                return ("Result", "StatusText")
            return ("StatusText",) if job_type else ()

        services = await asyncio.gather(*(
            self._get(path, SYSTEMD_SERVICE_INTERFACE, names)
            if (names := wanted(name, load, active, job_type)) else _nothing()
            for name, load, active, _sub, path, job_type in rows))
        found: dict[str, UnitStatus] = {}
        for (name, load, active, sub, _path, job_type), service in zip(rows, services,
                                                                      strict=True):
            result = str(service.get("Result", "success"))
            found[name] = UnitStatus(name, active, sub, result,
                                     str(service.get("StatusText", "")), job_type, load)
        return found

    async def list_units(self, patterns: Sequence[str]) -> dict[str, UnitStatus]:
        """The units systemd has loaded whose names match `patterns` (states only)."""
        return {name: UnitStatus(name, active, sub, load_state=load, job_type=job_type)
                for name, load, active, sub, _path, job_type in await self._rows(
                    "ListUnitsByPatterns", "asas", [[], list(patterns)])}

    async def unit(self, name: str) -> UnitStatus:
        """One unit, loaded if systemd has not (a unit that does not exist reads
        `not-found`); a service's result, STATUS= text and main process status too."""
        (path,) = await self._manager("LoadUnit", "s", [name])
        unit, service = await asyncio.gather(
            self._get(path, SYSTEMD_UNIT_INTERFACE, ("LoadState", "ActiveState", "SubState")),
            self._get(path, SYSTEMD_SERVICE_INTERFACE,
                      ("Result", "StatusText", "ExecMainCode", "ExecMainStatus"))
            if name.endswith(".service") else _nothing())
        code, status = service.get("ExecMainCode"), service.get("ExecMainStatus")
        return UnitStatus(name, str(unit.get("ActiveState", "")), str(unit.get("SubState", "")),
                          str(service.get("Result", "")), str(service.get("StatusText", "")),
                          load_state=str(unit.get("LoadState", "")),
                          exec_main_code=code if isinstance(code, int) else None,
                          exec_main_status=status if isinstance(status, int) else None)

    async def manager_environment(self) -> list[str]:
        """The service manager's own environment (`systemctl show-environment`), which
        every unit it starts inherits: `systemctl set-environment` adds to it."""
        value = await dbus.get_property(self.bus, SYSTEMD_BUS_NAME, SYSTEMD_OBJECT_PATH,
                                        SYSTEMD_MANAGER_INTERFACE, "Environment")
        return [str(item) for item in value]

    async def environments(self, units: Iterable[str]) -> dict[str, UnitEnvironment]:
        """Each loaded service's Environment=, EnvironmentFile= and unit files (one that is
        not loaded is left out)."""
        rows = [row for row in await self._rows("ListUnitsByNames", "as", [list(units)])
                if row[1] == "loaded" and row[0].endswith(".service")]
        found = await asyncio.gather(*(asyncio.gather(
            self._get(path, SYSTEMD_SERVICE_INTERFACE, ("Environment", "EnvironmentFiles")),
            self._get(path, SYSTEMD_UNIT_INTERFACE, ("FragmentPath", "DropInPaths")))
            for _name, _load, _active, _sub, path, _job in rows))
        return {row[0]: UnitEnvironment(
            row[0], tuple(str(item) for item in service.get("Environment", ())),
            tuple(str(item[0]) for item in service.get("EnvironmentFiles", ())),
            str(unit.get("FragmentPath", "")),
            tuple(str(item) for item in unit.get("DropInPaths", ())))
            for row, (service, unit) in zip(rows, found, strict=True)}

    async def timers(self, names: Iterable[str]) -> dict[str, TimerStatus]:
        """Timer units (loaded on demand) and when each elapses next and last."""
        rows = await self._rows("ListUnitsByNames", "as", [list(names)])
        times = await asyncio.gather(*(
            self._get(path, SYSTEMD_TIMER_INTERFACE,
                      ("NextElapseUSecRealtime", "LastTriggerUSec"))
            if load == "loaded" else _nothing()
            for _name, load, _active, _sub, path, _job in rows))
        return {name: TimerStatus(name, load, active, sub,
                                  _usec(timer.get("NextElapseUSecRealtime")),
                                  _usec(timer.get("LastTriggerUSec")))
                for (name, load, active, sub, _path, _job), timer in zip(rows, times,
                                                                         strict=True)}


async def _nothing() -> dict[str, Any]:
    return {}
