"""The tenants' confinement, as published by their runners and read by the router (and
`mushishi status`, the watchdog): the `tenants` sovereignty layer of DESIGN §9.

Each running tenant's unit has `RuntimeDirectory=mushishi/tenants/<name>`: systemd creates
it when the unit starts and removes it when the unit stops, whatever the runner did, so
"the directory exists" means "the tenant is running" without asking systemd. Inside it the
runner replaces `confinement.json` after every probe. The layer is:

* `True`: every running tenant's latest probe was refused, or no tenant is running (a box
  in mode `off` has no model server that could leak a prompt);
* `False`: one running tenant's latest probe left the box (or its containers joined a
  network they must not);
* `None`: a running tenant was not probed yet (it is starting), its probe could not tell,
  or its record is unreadable or older than three probe intervals (its runner is stuck).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mushishi.shared.files import JsonFileError, load_json_object, write_json
from mushishi.shared.locality import AddressError, parse_backend_url

if TYPE_CHECKING:
    from mushishi.shared.config import MushishiSettings

TENANTS_RUN_DIR = Path("/run/mushishi/tenants")
RECORD_NAME = "confinement.json"
# A record older than this many probe intervals (plus the slack) counts as not known.
STALE_INTERVALS = 3
STALE_SLACK_S = 30.0


@dataclass(frozen=True, slots=True)
class TenantRecord:
    """One tenant's latest probe, as its runner wrote it."""

    tenant: str
    runtime: str
    confined: bool | None
    detail: str
    checked_at: float  # Unix time
    interval_s: float
    probe: str


@dataclass(frozen=True, slots=True)
class TenantsLayer:
    """The layer verdict, one line naming the tenant it hinges on, and every reading (with
    its one line in `details`)."""

    verdict: bool | None
    detail: str
    tenants: dict[str, bool | None]
    details: dict[str, str] = field(default_factory=dict)

    def unconfined(self) -> dict[str, str]:
        """Tenant -> its line, for every running tenant whose probe left the box."""
        return {name: self.details.get(name, f"tenant {name} is not confined")
                for name, verdict in self.tenants.items() if verdict is False}


def write_record(directory: Path, record: TenantRecord) -> None:
    """Publish `record` in `directory` (the unit's runtime directory), atomically, 0644."""
    write_json(directory / RECORD_NAME, asdict(record), 0o644)


def read_record(path: Path) -> TenantRecord | None:
    """A record written by `write_record`, None when there is none yet; JsonFileError,
    KeyError, TypeError or ValueError when the file is not one."""
    data = load_json_object(path)
    if data is None:
        return None
    confined = data["confined"]
    if confined not in (True, False, None):
        raise ValueError(f"confined is {confined!r}")
    return TenantRecord(str(data["tenant"]), str(data["runtime"]), confined,
                        str(data["detail"]), float(data["checked_at"]),
                        float(data["interval_s"]), str(data["probe"]))


def _reading(directory: Path, now: float) -> tuple[bool | None, str]:
    name = directory.name
    path = directory / RECORD_NAME
    try:
        record = read_record(path)
    except JsonFileError as error:
        return None, f"tenant {name}: unreadable {path} ({error.cause or 'not an object'})"
    except (ValueError, KeyError, TypeError) as error:
        return None, f"tenant {name}: unreadable {path} ({error})"
    if record is None:
        return None, f"tenant {name}: not probed yet (starting)"
    age = now - record.checked_at
    if age > STALE_INTERVALS * record.interval_s + STALE_SLACK_S:
        return None, (f"tenant {name}: the last probe is {age:.0f} s old (every "
                      f"{record.interval_s:g} s expected): is its runner stuck?")
    return record.confined, f"tenant {name}: {record.detail}"


def read_tenants_layer(run_dir: Path = TENANTS_RUN_DIR, *, now: float) -> TenantsLayer:
    """The `tenants` layer from the records under `run_dir` at Unix time `now`."""
    try:
        running = sorted(p for p in run_dir.iterdir() if p.is_dir())
    except FileNotFoundError:
        running = []
    except OSError as error:
        return TenantsLayer(None, f"cannot read {run_dir}: {error}", {})
    if not running:
        return TenantsLayer(True, "no tenant is running", {})
    readings = {p.name: _reading(p, now) for p in running}
    tenants = {name: verdict for name, (verdict, _) in readings.items()}
    details = {name: detail for name, (_, detail) in readings.items()}
    for wanted in (False, None):
        for verdict, detail in readings.values():
            if verdict is wanted:
                return TenantsLayer(wanted, detail, tenants, details)
    names = ", ".join(readings)
    return TenantsLayer(True, f"every running tenant is confined ({names})", tenants, details)


def served_backends(settings: MushishiSettings) -> dict[str, frozenset[str]]:
    """Tenant -> the backends ([backends.*]) it serves: those whose URL names the tenant's
    port (`port`, else its health_url's) on a loopback address or on its health_url's host.
    A unix-socket backend is no tenant's."""
    served: dict[str, frozenset[str]] = {}
    addresses = {}
    for name, backend in settings.backends.items():
        try:
            addresses[name] = parse_backend_url(backend.url)
        except AddressError:
            continue
    for tenant_name, tenant in settings.tenants.items():
        try:
            health = parse_backend_url(tenant.health_url)
        except AddressError:
            continue
        port = tenant.port or health.port
        served[tenant_name] = frozenset(
            name for name, address in addresses.items()
            if address.port == port and address.host is not None
            and (address.host in (health.host, "localhost")
                 or (address.ip is not None and address.ip.is_loopback)))
    return served


def refused_backends(layer: TenantsLayer, served: Mapping[str, frozenset[str]]
                     ) -> dict[str, str]:
    """Backend -> why T1 work may not go to it: it is served by a tenant whose probe left
    the box (the tenant's line, naming it)."""
    refused: dict[str, str] = {}
    for tenant, line in sorted(layer.unconfined().items()):
        for backend in sorted(served.get(tenant, ())):
            refused.setdefault(backend, f"served by tenant {tenant}, which is not confined "
                                        f"({line})")
    return refused
