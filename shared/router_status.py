"""The one client of the router's GET /status, and the contract of its body, typed.

The router answers /status without an API key on its unix socket (docs/router.md has the
JSON); `mushishi route`, `mushishi status` and the watchdog read it with `read_status()`
and get a `Reading[RouterStatus]`. The dataclasses below are the whole body, so readers
use attributes, never string keys; `RouterStatus.to_json()` gives the body back exactly as
the router sent it (tests/integration/router/test_status_contract.py holds the router's
`status()` to that).

Async, on asyncio streams (shared/local_http.py), not blocking http.client: `mushishi
status` and the watchdog read every source concurrently in one event loop, and a hung router
(whose socket still accepts: systemd holds it) must cost only its timeout. The caller wraps
the whole read, connection included, in `asyncio.timeout` (readings.within); cancelling it
closes the socket, and nothing is left behind for `asyncio.run` to join at exit, which a
blocking read in a thread would be (LESSONS.md, "Observability"). `mushishi route` runs it
under `asyncio.run` too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from mushishi.shared.local_http import READ_ERRORS, HttpError, http_get, json_object
from mushishi.shared.readings import Reading, down, error, missing, ok

DEFAULT_SOCKET = "/run/mushishi/router.sock"

T = TypeVar("T")


class ContractError(ValueError):
    """A /status body that is not the contract below; the message names the key."""


def _get(data: Mapping[str, Any], key: str, kinds: type | tuple[type, ...], where: str,
         optional: bool = False) -> Any:
    if key not in data:
        raise ContractError(f"{where} has no {key!r}")
    value = data[key]
    if value is None and optional:
        return None
    if not isinstance(value, kinds):
        raise ContractError(f"{where}.{key} is {type(value).__name__}, not "
                            f"{kinds.__name__ if isinstance(kinds, type) else 'a number'}")
    return value


def _endpoints(data: Mapping[str, Any], where: str) -> list[str] | None:
    """The optional `endpoints` list (absent from a router older than DESIGN.md §9's)."""
    value = data.get("endpoints")
    return None if value is None else _strings(value, f"{where}.endpoints")


def _object(data: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    return _get(data, key, dict, where)  # type: ignore[no-any-return]


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ContractError(f"{where} is not a list of strings")
    return list(value)


def _each(data: Mapping[str, Any], key: str, parse: Callable[[Mapping[str, Any], str], T]
          ) -> dict[str, T]:
    entries = _object(data, key, "/status")
    found = {}
    for name, entry in entries.items():
        if not isinstance(entry, dict):
            raise ContractError(f"/status.{key}.{name} is not an object")
        found[name] = parse(entry, f"/status.{key}.{name}")
    return found


NUMBER = (int, float)


@dataclass(frozen=True, slots=True)
class Sovereignty:
    """The layers that keep T1 work on the box (`null`: cannot be shown yet). `detail` is
    about the router's own layers, `tenants_detail` names the tenant the `tenants` layer
    hinges on, `tenant_verdicts` has each running tenant's."""

    config: bool | None
    connect_time: bool | None
    kernel: bool | None
    tenants: bool | None
    detail: str
    tenants_detail: str
    tenant_verdicts: dict[str, bool | None]
    summary: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> Sovereignty:
        """Parse; ContractError naming the key."""
        verdicts = _object(data, "tenant_verdicts", where)
        for name, verdict in verdicts.items():
            if verdict is not None and not isinstance(verdict, bool):
                raise ContractError(f"{where}.tenant_verdicts.{name} is not true, false or "
                                    "null")
        return cls(*(_get(data, key, bool, where, optional=True)
                     for key in ("config", "connect_time", "kernel", "tenants")),
                   _get(data, "detail", str, where), _get(data, "tenants_detail", str, where),
                   dict(verdicts), _get(data, "summary", str, where))

    def layers(self) -> dict[str, bool | None]:
        """Each layer's verdict, by the name the summary gives it."""
        return {"config": self.config, "connect-time": self.connect_time,
                "kernel": self.kernel, "tenants": self.tenants}

    def to_json(self) -> dict[str, Any]:
        """As the router sends it."""
        return {"config": self.config, "connect_time": self.connect_time,
                "kernel": self.kernel, "tenants": self.tenants, "detail": self.detail,
                "tenants_detail": self.tenants_detail,
                "tenant_verdicts": dict(self.tenant_verdicts), "summary": self.summary}


@dataclass(frozen=True, slots=True)
class GpuFollowed:
    """What the router last heard from gpud (`present` false: gpud is not on the bus)."""

    present: bool
    active_mode: str | None
    state: str | None
    last_switch_reason: str | None = None  # gpud's LastSwitchReason

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> GpuFollowed:
        """Parse; ContractError naming the key."""
        return cls(_get(data, "present", bool, where),
                   _get(data, "active_mode", str, where, optional=True),
                   _get(data, "state", str, where, optional=True),
                   _get(data, "last_switch_reason", str, where, optional=True)
                   if "last_switch_reason" in data else None)  # a router from before it

    def to_json(self) -> dict[str, Any]:
        """As the router sends it."""
        return {"present": self.present, "active_mode": self.active_mode, "state": self.state,
                "last_switch_reason": self.last_switch_reason}


@dataclass(frozen=True, slots=True)
class BackendStatus:
    """One backend: its state for routing (up, unknown, starting, down, switching,
    mode_inactive, cloud) and why, where it is, and its load."""

    state: str
    reason: str
    local: bool
    locality: str
    modes: list[str] | None
    in_flight: int
    queued: int
    max_concurrency: int | None
    model: str
    # The endpoints it serves (backends.<name>.endpoints); None from a router older than
    # DESIGN.md §9's.
    endpoints: list[str] | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> BackendStatus:
        """Parse; ContractError naming the key."""
        modes = _get(data, "modes", list, where, optional=True)
        return cls(_get(data, "state", str, where), _get(data, "reason", str, where),
                   _get(data, "local", bool, where), _get(data, "locality", str, where),
                   None if modes is None else _strings(modes, f"{where}.modes"),
                   _get(data, "in_flight", int, where), _get(data, "queued", int, where),
                   _get(data, "max_concurrency", int, where, optional=True),
                   _get(data, "model", str, where), _endpoints(data, where))

    def to_json(self) -> dict[str, Any]:
        """As the router sends it."""
        return {"state": self.state, "reason": self.reason, "local": self.local,
                "locality": self.locality, "modes": self.modes, "in_flight": self.in_flight,
                "queued": self.queued, "max_concurrency": self.max_concurrency,
                "model": self.model, "endpoints": self.endpoints}


@dataclass(frozen=True, slots=True)
class ProfileStatus:
    """One profile: which backend would answer it now, and why."""

    tier: str
    chain: list[str]
    would_use: str | None
    reason: str
    queued: int
    require_mode: str | None
    # The endpoints its chain serves (as /v1/models lists them); None from an older router.
    endpoints: list[str] | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> ProfileStatus:
        """Parse; ContractError naming the key."""
        return cls(_get(data, "tier", str, where),
                   _strings(_get(data, "chain", list, where), f"{where}.chain"),
                   _get(data, "would_use", str, where, optional=True),
                   _get(data, "reason", str, where), _get(data, "queued", int, where),
                   _get(data, "require_mode", str, where, optional=True),
                   _endpoints(data, where))

    def to_json(self) -> dict[str, Any]:
        """As the router sends it."""
        return {"tier": self.tier, "chain": self.chain, "would_use": self.would_use,
                "reason": self.reason, "queued": self.queued,
                "require_mode": self.require_mode, "endpoints": self.endpoints}


@dataclass(frozen=True, slots=True)
class CloudShareStatus:
    """One profile's share of answered requests served by a cloud backend."""

    hour: float
    day: float
    requests_hour: int
    requests_day: int
    cloud_requests_hour: int
    cloud_requests_day: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> CloudShareStatus:
        """Parse; ContractError naming the key."""
        return cls(_get(data, "hour", NUMBER, where), _get(data, "day", NUMBER, where),
                   _get(data, "requests_hour", int, where),
                   _get(data, "requests_day", int, where),
                   _get(data, "cloud_requests_hour", int, where),
                   _get(data, "cloud_requests_day", int, where))

    def to_json(self) -> dict[str, Any]:
        """As the router sends it."""
        return {"hour": self.hour, "day": self.day, "requests_hour": self.requests_hour,
                "requests_day": self.requests_day,
                "cloud_requests_hour": self.cloud_requests_hour,
                "cloud_requests_day": self.cloud_requests_day}


@dataclass(frozen=True, slots=True)
class ReloadStatus:
    """The last reload: what it could not apply (empty: nothing waits for a restart)."""

    pending_restart: list[str]
    detail: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> ReloadStatus:
        """Parse; ContractError naming the key."""
        return cls(_strings(_get(data, "pending_restart", list, where),
                            f"{where}.pending_restart"),
                   _get(data, "detail", str, where))

    def to_json(self) -> dict[str, Any]:
        """As the router sends it."""
        return {"pending_restart": self.pending_restart, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class RouterStatus:
    """The whole body of GET /status."""

    version: str
    draining: bool
    in_flight: int
    sovereignty: Sovereignty
    gpu: GpuFollowed
    backends: dict[str, BackendStatus]
    profiles: dict[str, ProfileStatus]
    cloud_share: dict[str, CloudShareStatus]
    reload: ReloadStatus

    @classmethod
    def from_json(cls, data: Any) -> RouterStatus:
        """Parse a /status body; ContractError naming the first key that does not fit."""
        if not isinstance(data, dict):
            raise ContractError("/status is not a JSON object")
        return cls(_get(data, "version", str, "/status"),
                   _get(data, "draining", bool, "/status"),
                   _get(data, "in_flight", int, "/status"),
                   Sovereignty.from_json(_object(data, "sovereignty", "/status"),
                                         "/status.sovereignty"),
                   GpuFollowed.from_json(_object(data, "gpu", "/status"), "/status.gpu"),
                   _each(data, "backends", BackendStatus.from_json),
                   _each(data, "profiles", ProfileStatus.from_json),
                   _each(data, "cloud_share", CloudShareStatus.from_json),
                   ReloadStatus.from_json(_object(data, "reload", "/status"),
                                          "/status.reload"))

    def to_json(self) -> dict[str, Any]:
        """The body, as the router sends it."""
        return {
            "version": self.version, "draining": self.draining, "in_flight": self.in_flight,
            "sovereignty": self.sovereignty.to_json(), "gpu": self.gpu.to_json(),
            "backends": {name: entry.to_json() for name, entry in self.backends.items()},
            "profiles": {name: entry.to_json() for name, entry in self.profiles.items()},
            "cloud_share": {name: entry.to_json() for name, entry in self.cloud_share.items()},
            "reload": self.reload.to_json(),
        }


async def read_status(socket_path: str | None) -> Reading[RouterStatus]:
    """GET /status over the router's unix socket. Bound it with readings.within: a hung
    router accepts the connection and never answers."""
    if socket_path is None:
        return missing("router.listen has no unix: address to read /status from")
    try:
        status, body = await http_get("/status", unix_socket=socket_path)
    except FileNotFoundError:
        return down(f"the router's socket {socket_path} does not exist (is "
                    "mushishi-router.socket running? `systemctl status mushishi-router.socket`)")
    except PermissionError:
        return error(f"permission denied on {socket_path} (run as root or as a member of "
                     "group mushishi)")
    except ConnectionRefusedError:
        return down(f"nothing accepts connections on {socket_path} (`systemctl status "
                    "mushishi-router.socket`)")
    except READ_ERRORS as caught:
        return down(f"cannot read the router's status on {socket_path}: {caught}")
    if status != 200:
        return error(f"the router answered {status} to GET /status")
    try:
        return ok(RouterStatus.from_json(json_object(body, "the router's /status")))
    except HttpError as caught:
        return error(str(caught))
    except ContractError as caught:
        return error(f"the router's /status does not match this mushishi ({caught}): are the "
                     "router and this command from the same version?")
