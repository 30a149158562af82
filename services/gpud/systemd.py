"""A small client of systemd's own D-Bus API (org.freedesktop.systemd1(5)).

Isolating a mode target, reading unit states and jobs, and the signals that reveal a
switch made with `systemctl isolate` behind gpud's back: JobNew/JobRemoved from the
manager and PropertiesChanged from units.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError

from mushishi.services.gpud.core import UnitStatus
from mushishi.shared.dbus_names import (
    SYSTEMD_BUS_NAME,
    SYSTEMD_MANAGER_INTERFACE,
    SYSTEMD_OBJECT_PATH,
)

SERVICE_INTERFACE = "org.freedesktop.systemd1.Service"
PROPERTIES_INTERFACE = "org.freedesktop.DBus.Properties"
UNIT_PATH_PREFIX = "/org/freedesktop/systemd1/unit/"

MANAGER_SIGNALS_MATCH = (
    f"type='signal',sender='{SYSTEMD_BUS_NAME}',interface='{SYSTEMD_MANAGER_INTERFACE}',"
    f"path='{SYSTEMD_OBJECT_PATH}'"
)
UNIT_PROPERTIES_MATCH = (
    f"type='signal',sender='{SYSTEMD_BUS_NAME}',interface='{PROPERTIES_INTERFACE}',"
    f"member='PropertiesChanged',path_namespace='/org/freedesktop/systemd1/unit'"
)


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
    return UNIT_PATH_PREFIX + escaped


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Variant) else value


class SystemdClient:
    """Calls and signals of the systemd manager, on an existing bus connection."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self._paths: dict[str, str] = {}
        self._on_job: Callable[[JobEvent], None] | None = None
        self._on_change: Callable[[UnitChange], None] | None = None

    async def _call(self, member: str, signature: str = "", body: list[Any] | None = None,
                    *, path: str = SYSTEMD_OBJECT_PATH,
                    interface: str = SYSTEMD_MANAGER_INTERFACE,
                    destination: str = SYSTEMD_BUS_NAME) -> list[Any]:
        reply = await self.bus.call(Message(
            destination=destination, path=path, interface=interface, member=member,
            signature=signature, body=body or [],
        ))
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            raise DBusError(reply.error_name or "org.freedesktop.DBus.Error.Failed",
                            str(reply.body[0]) if reply.body else "", reply)
        return list(reply.body)

    async def _bus_call(self, member: str, signature: str, body: list[Any]) -> list[Any]:
        return await self._call(member, signature, body, path="/org/freedesktop/DBus",
                                interface="org.freedesktop.DBus",
                                destination="org.freedesktop.DBus")

    async def watch(self, units: Iterable[str], on_job: Callable[[JobEvent], None],
                    on_change: Callable[[UnitChange], None]) -> None:
        """Subscribe to the manager's signals and route those about `units` to callbacks."""
        self._paths = {unit_path(unit): unit for unit in units}
        self._on_job = on_job
        self._on_change = on_change
        self.bus.add_message_handler(self._dispatch)
        await self._bus_call("AddMatch", "s", [MANAGER_SIGNALS_MATCH])
        await self._bus_call("AddMatch", "s", [UNIT_PROPERTIES_MATCH])
        await self._call("Subscribe")

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
        elif (msg.interface == PROPERTIES_INTERFACE and msg.member == "PropertiesChanged"
              and msg.path in self._paths and self._on_change is not None):
            _interface, changed, _invalidated = msg.body
            self._on_change(UnitChange(self._paths[msg.path],
                                       {k: _plain(v) for k, v in changed.items()}))
        return False  # never swallow: other handlers (holds) may want the same signal

    async def isolate(self, unit: str) -> str:
        """StartUnit(unit, "isolate"); returns the job's object path once it is queued."""
        (job,) = await self._call("StartUnit", "ss", [unit, "isolate"])
        return str(job)

    async def statuses(self, units: Iterable[str]) -> dict[str, UnitStatus]:
        """Active state and pending job of each unit; result and STATUS= text of services
        that are not running (why a tenant failed)."""
        names = list(units)
        (rows,) = await self._call("ListUnitsByNames", "as", [names])
        found: dict[str, UnitStatus] = {}
        for row in rows:
            name, _desc, _load, active, sub, _following, path, _job_id, job_type, _jp = row
            result, text = "success", ""
            if name.endswith(".service") and active not in ("active", "reloading"):
                result, text = await self._service_result(str(path))
            elif name.endswith(".service") and job_type:
                _result, text = await self._service_result(str(path))
            found[name] = UnitStatus(name, str(active), str(sub), result, text, str(job_type))
        return found

    async def _service_result(self, path: str) -> tuple[str, str]:
        try:
            (props,) = await self._call("GetAll", "s", [SERVICE_INTERFACE], path=path,
                                        interface=PROPERTIES_INTERFACE)
        except DBusError:
            return "success", ""
        return str(_plain(props.get("Result", "success"))), str(
            _plain(props.get("StatusText", "")))

    async def pending_jobs(self, units: Iterable[str]) -> dict[str, str]:
        """Queued or running jobs on `units`: unit -> job type."""
        wanted = set(units)
        (jobs,) = await self._call("ListJobs")
        return {str(unit): str(job_type) for _id, unit, job_type, _state, _jp, _up in jobs
                if unit in wanted}

    async def name_has_owner(self, name: str) -> bool:
        """Whether a bus name (a hold's owner) is still connected."""
        (owned,) = await self._bus_call("NameHasOwner", "s", [name])
        return bool(owned)

    async def caller_uid(self, name: str) -> int:
        """The unix uid behind a bus name."""
        (uid,) = await self._bus_call("GetConnectionUnixUser", "s", [name])
        return int(uid)
