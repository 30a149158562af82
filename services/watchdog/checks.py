"""The watchdog's checks: pure functions from gathered facts to ok / problem / missing-source.

Each fact arrives as a `Reading` (shared/readings.py): ok with its value, `missing` (the
source does not exist on this box, e.g. no bench results yet), or failed (`down` or
`error`: the source should have answered and did not). A missing source is reported as
such, never as healthy; a failed one is a problem, except where a check says otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from mushishi.shared.gpumode import GpuModeProperties
from mushishi.shared.readings import Reading
from mushishi.shared.router_status import RouterStatus
from mushishi.shared.tenant_confinement import TenantsLayer


class Status(StrEnum):
    """The three answers a check can give."""

    OK = "ok"
    PROBLEM = "problem"
    MISSING_SOURCE = "missing-source"


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check's answer; `name` is stable (it keys alert dedup)."""

    name: str
    status: Status
    detail: str

    def as_dict(self) -> dict[str, str]:
        """For last.json."""
        return {"name": self.name, "status": self.status.value, "detail": self.detail}


def _unavailable(name: str, source: Reading[Any]) -> CheckResult | None:
    if source.status == "missing":
        return CheckResult(name, Status.MISSING_SOURCE, source.detail)
    if source.failed:
        return CheckResult(name, Status.PROBLEM, source.detail)
    return None


def _unavailable_daemon(name: str, source: Reading[Any]) -> CheckResult | None:
    """A daemon that is down is its unit check's problem: what it would have told this
    check is a missing source. A daemon that answers wrongly is a problem."""
    if source.status == "down":
        return CheckResult(name, Status.MISSING_SOURCE, source.detail)
    return _unavailable(name, source)


def _ok(name: str, detail: str) -> CheckResult:
    return CheckResult(name, Status.OK, detail)


def _problem(name: str, detail: str) -> CheckResult:
    return CheckResult(name, Status.PROBLEM, detail)


def _age(now: datetime, then: datetime) -> str:
    days = (now - then).total_seconds() / 86400
    return f"{days:.1f} days" if days >= 1 else f"{days * 24:.1f} hours"


# -- backups -------------------------------------------------------------------------------

def backup_age(reading: Reading[Sequence[datetime]], *, now: datetime,
               max_age_days: float) -> CheckResult:
    """The newest snapshot in the repository, read from restic itself, is recent enough."""
    name = "backup-age"
    unavailable = _unavailable(name, reading)
    if unavailable:
        return unavailable
    snapshots = reading.value()
    if not snapshots:
        return _problem(name, "the repository holds no snapshot at all")
    newest = max(snapshots)
    age_days = (now - newest).total_seconds() / 86400
    if age_days > max_age_days:
        return _problem(name, f"newest snapshot is {_age(now, newest)} old (from "
                        f"{newest.isoformat(timespec='minutes')}; limit "
                        f"{max_age_days:g} days, watchdog.backup_max_age_days)")
    return _ok(name, f"newest snapshot is {_age(now, newest)} old ({len(snapshots)} in total)")


def backup_result(reading: Reading[Mapping[str, Any]]) -> CheckResult:
    """The last `mushishi-backup run` ended ok (a warning or a partial backup is a problem)."""
    name = "backup-result"
    unavailable = _unavailable(name, reading)
    if unavailable:
        return unavailable
    last = reading.value()
    outcome = last.get("outcome", "unknown")
    when = last.get("finished") or last.get("time") or "?"
    if outcome == "ok":
        return _ok(name, f"last backup ok at {when}, snapshots "
                   f"{', '.join(last.get('snapshot_ids') or []) or 'none'}")
    reasons = list(last.get("errors") or []) + list(last.get("warnings") or [])
    detail = "; ".join(reasons[:5]) or "no detail recorded"
    return _problem(name, f"last backup at {when} ended {outcome}: {detail}")


def restore_verify(reading: Reading[Mapping[str, Any]]) -> CheckResult:
    """The restore sample of the last backup matched its sources."""
    name = "restore-verify"
    unavailable = _unavailable(name, reading)
    if unavailable:
        return unavailable
    last = reading.value()
    verify = last.get("verify") or {}
    outcome = verify.get("outcome", "skipped")
    if outcome == "ok":
        return _ok(name, f"{verify.get('files_matched', 0)} restored files matched their "
                   f"sources")
    if outcome == "skipped":
        return CheckResult(name, Status.MISSING_SOURCE, "the last backup run verified no "
                           f"restore: {verify.get('error') or 'nothing to verify'}")
    problems = list(verify.get("mismatches") or [])
    if verify.get("error"):
        problems.insert(0, str(verify["error"]))
    return _problem(name, f"restore verification {outcome}: {'; '.join(problems[:5])}")


def backup_check(reading: Reading[Mapping[str, Any]]) -> CheckResult:
    """The last monthly `restic check --read-data-subset` found no error."""
    name = "backup-check"
    unavailable = _unavailable(name, reading)
    if unavailable:
        return unavailable
    check = reading.value()
    when = check.get("finished") or "?"
    if check.get("outcome") == "ok":
        return _ok(name, f"restic check passed at {when} (read "
                   f"{check.get('read_data_subset')} of the data)")
    return _problem(name, f"restic check at {when} failed: {check.get('error')}")


def backup_copy(repository: str, reading: Reading[Mapping[str, Any]], *, now: datetime,
                max_age_days: float, limit_key: str) -> CheckResult:
    """An off-box copy (`[[backup.copies]]`, by its shown repository) is fresh, its last copy
    did not fail, and a restore sample from it matched; read from the backup's last.json
    (the watchdog never reaches off the box), aged by the clock (a backup that stopped
    running makes its copies stale too)."""
    name = f"backup-copy:{repository}"
    unavailable = _unavailable(name, reading)
    if unavailable:
        return unavailable
    last = reading.value()
    entry = next((c for c in last.get("copies") or []
                  if isinstance(c, Mapping) and c.get("repository") == repository), None)
    if entry is None:
        return CheckResult(name, Status.MISSING_SOURCE,
                           f"no backup run has copied to {repository} yet")
    problems: list[str] = []
    parts: list[str] = []
    newest = _time(entry.get("newest_snapshot_time"))
    if newest is None:
        problems.append("the copy holds no snapshot of this box yet")
    elif (now - newest).total_seconds() / 86400 > max_age_days:
        problems.append(f"newest snapshot is {_age(now, newest)} old (from "
                        f"{newest.isoformat(timespec='minutes')}; limit {max_age_days:g} days, "
                        f"{limit_key})")
    else:
        parts.append(f"newest snapshot is {_age(now, newest)} old")
    if entry.get("outcome") == "failed":
        verify = entry.get("verify") if isinstance(entry.get("verify"), Mapping) else {}
        details = [verify.get("error"), *list(verify.get("mismatches") or [])[:3]]
        reason = entry.get("error") or "; ".join(str(d) for d in details if d) \
            or "no detail recorded"
        problems.append(f"the last copy at {last.get('finished') or '?'} failed: {reason}")
    verified = _time(entry.get("last_verified_time"))
    verify_text = (f"restore sample verified {_age(now, verified)} ago" if verified
                   else "restore sample never verified")
    if problems:
        return _problem(name, "; ".join([*problems, verify_text]))
    return _ok(name, ", ".join([*parts, verify_text]) + f" (last copy {entry.get('outcome')})")


def _time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


# -- disks ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DiskUsage:
    """statvfs, reduced to what `df` shows."""

    total_bytes: int
    free_bytes: int       # f_bfree: free, including root's reserve
    available_bytes: int  # f_bavail: free for unprivileged users

    @property
    def used_percent(self) -> float:
        """`df`'s Use%: used / (used + available)."""
        used = self.total_bytes - self.free_bytes
        denominator = used + self.available_bytes
        return 100.0 * used / denominator if denominator else 0.0


def disk(mount: str, reading: Reading[DiskUsage], *, max_percent: float) -> CheckResult:
    """Disk use on one configured mount is below the limit."""
    name = f"disk:{mount}"
    unavailable = _unavailable(name, reading)
    if unavailable:
        return unavailable
    usage = reading.value()
    percent = usage.used_percent
    free_gib = usage.available_bytes / (1 << 30)
    detail = f"{percent:.1f}% used, {free_gib:.1f} GiB free (limit {max_percent:g}%)"
    return _problem(name, detail) if percent >= max_percent else _ok(name, detail)


# -- units and the CPU floor ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class UnitState:
    """What systemd says about a unit (and its socket, for socket-activated services)."""

    load_state: str
    active_state: str
    sub_state: str
    result: str = ""
    socket_active: bool | None = None  # None: the unit has no socket


def unit_active(unit: str, reading: Reading[UnitState]) -> CheckResult:
    """An always-on unit is active (or waits on its active socket)."""
    name = f"unit:{unit}"
    unavailable = _unavailable(name, reading)
    if unavailable:
        return unavailable
    state = reading.value()
    if state.load_state != "loaded":
        return _problem(name, f"{unit} is {state.load_state} (not installed? run "
                        f"`mushishi install`)")
    if state.active_state == "active":
        return _ok(name, f"active ({state.sub_state})")
    if state.active_state == "inactive" and state.socket_active:
        return _ok(name, "inactive, its socket is listening (socket activation)")
    result = f", result {state.result}" if state.result and state.result != "success" else ""
    return _problem(name, f"{unit} is {state.active_state} ({state.sub_state}{result}); "
                    f"see `journalctl -u {unit}`")


def cpu_floor(unit: str, unit_reading: Reading[UnitState],
              models_reading: Reading[Sequence[str]], *, alias: str, url: str) -> CheckResult:
    """The CPU floor answers: its unit is active and /v1/models lists the configured alias."""
    name = "cpu-floor"
    unavailable = _unavailable(name, unit_reading)
    if unavailable:
        return unavailable
    state = unit_reading.value()
    if state.active_state != "active":
        return _problem(name, f"{unit} is {state.active_state} ({state.sub_state})")
    unavailable = _unavailable(name, models_reading)
    if unavailable:
        return CheckResult(name, Status.PROBLEM, unavailable.detail)
    models = models_reading.value()
    if alias not in models:
        return _problem(name, f"{url} lists {sorted(models)}, not the alias {alias!r} "
                        f"(cpu_floor.alias) that backend chains use")
    return _ok(name, f"{alias} answers on {url}")


# -- router, GPU, bench --------------------------------------------------------------------

def cloud_share(reading: Reading[RouterStatus], *, max_share: float,
                min_requests: int) -> CheckResult:
    """The share of router requests answered by cloud backends over the last day."""
    name = "cloud-share"
    unavailable = _unavailable_daemon(name, reading)
    if unavailable:
        return unavailable
    total = cloud = 0.0
    over: list[str] = []
    for profile, entry in sorted(reading.value().cloud_share.items()):
        share = float(entry.day)
        requests = float(entry.requests_day)
        total += requests
        cloud += share * requests
        if share > max_share and requests:
            over.append(f"{profile} {share:.0%} of {requests:.0f}")
    if total < max(min_requests, 1):
        return _ok(name, f"{total:.0f} requests in the last day, fewer than "
                   f"{min_requests} (watchdog.cloud_share_min_requests): not judged")
    overall = cloud / total
    detail = f"{overall:.1%} of {total:.0f} requests in the last day went to cloud backends"
    if overall > max_share:
        return _problem(name, f"{detail} (limit {max_share:.0%}, watchdog.cloud_share_max); "
                        f"by profile: {', '.join(over) or 'spread out'}")
    return _ok(name, detail)


def gpu(gpud: Reading[GpuModeProperties], *, max_temperature_c: float) -> CheckResult:
    """GPU temperature below the limit, not throttled, gpud not stuck in `failed`."""
    name = "gpu"
    unavailable = _unavailable_daemon(name, gpud)
    if unavailable:
        return unavailable
    reading = gpud.value()
    problems = []
    if reading.state == "failed":
        problems.append(f"gpud state failed: {reading.state_reason or 'no reason given'}")
    if reading.temperature_c is None and reading.throttled is None:
        if problems:
            return _problem(name, "; ".join(problems))
        return CheckResult(name, Status.MISSING_SOURCE,
                           "gpud exposes no GpuTemperatureC/GpuThrottled")
    if reading.temperature_c is not None and reading.temperature_c >= max_temperature_c:
        problems.append(f"GPU at {reading.temperature_c} °C (limit {max_temperature_c:g} °C, "
                        f"watchdog.gpu_max_temperature_c)")
    if reading.throttled:
        problems.append("the GPU is throttling")
    if problems:
        return _problem(name, "; ".join(problems))
    return _ok(name, f"{reading.temperature_c} °C, not throttled")


def bench(reading: Reading[Sequence[Mapping[str, str]]]) -> CheckResult:
    """The newest `mushishi bench` result of each target shows no speed regression."""
    name = "bench"
    unavailable = _unavailable(name, reading)
    if unavailable:
        return unavailable
    newest: dict[str, Mapping[str, str]] = {}
    for row in reading.value():
        target = row.get("target", "")
        if target not in newest or row.get("time", "") >= newest[target].get("time", ""):
            newest[target] = row
    if not newest:
        return CheckResult(name, Status.MISSING_SOURCE, "no bench result yet")
    regressed = [
        f"{target} at {row.get('tokens_per_s')} tok/s ({row.get('time')})"
        for target, row in sorted(newest.items())
        if str(row.get("regression", "")).strip().lower() == "true"
    ]
    if regressed:
        return _problem(name, "inference speed regression: " + "; ".join(regressed))
    return _ok(name, ", ".join(f"{t} {r.get('tokens_per_s')} tok/s"
                               for t, r in sorted(newest.items())))


# -- sovereignty ---------------------------------------------------------------------------

SOVEREIGNTY_LAYERS = ("config", "connect-time", "kernel", "tenants", "egress")
EGRESS_GROUP = "mushishi-egress"  # mushishi-egress.socket's SocketGroup=
TENANTS_GROUP = "mushishi"  # the tenants' and the CPU floor's group: they see T1 prompts


@dataclass(frozen=True, slots=True)
class EgressSocket:
    """Who may open the egress socket: its owner's and group's names, its mode bits."""

    path: str
    owner: str
    group: str
    mode: int


@dataclass(frozen=True, slots=True)
class LayerReading:
    """One sovereignty layer now: its verdict (True in force, False not, None not known),
    whether its source answered at all (`known`: False leaves the last word standing), the
    line that explains it, and the tenants it hinges on (tenants layer only)."""

    layer: str
    verdict: bool | None
    detail: str
    known: bool = True
    subject: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """What a change is: another verdict, or another tenant failing."""
        return f"{self.verdict}:{','.join(self.subject)}"

    @property
    def mark(self) -> str:
        """✓, ✗ or ?."""
        return "✓" if self.verdict else ("?" if self.verdict is None else "✗")


def egress_socket_layer(reading: Reading[EgressSocket]) -> LayerReading:
    """The egress's own door: only the router's group may open its socket (the file mode
    keeps the tenants and the CPU floor out before the egress's peer check)."""
    if reading.status == "missing":
        return LayerReading("egress", True, f"{reading.detail}: no cloud hop can leave")
    if reading.failed:
        return LayerReading("egress", None, reading.detail)
    socket = reading.value()
    mode = f"{socket.owner}:{socket.group} {socket.mode:04o}"
    # Connecting to a unix socket takes write permission on it.
    if socket.mode & 0o002:
        return LayerReading("egress", False, f"{socket.path} is {mode}: any process may open "
                            "the way to the cloud (mushishi-egress.socket sets SocketMode=0660; "
                            "`systemctl restart mushishi-egress.socket`)")
    if socket.mode & 0o020 and socket.group == TENANTS_GROUP:
        return LayerReading("egress", False, f"{socket.path} is {mode}: the tenants and the CPU "
                            f"floor (group {TENANTS_GROUP}), which see T1 prompts, may open the "
                            f"way to the cloud (SocketGroup={EGRESS_GROUP}; `systemctl restart "
                            "mushishi-egress.socket`)")
    return LayerReading("egress", True, f"{socket.path} is {mode}: only the router's group "
                        f"{socket.group} may open it, and the egress refuses T1 work itself")


def sovereignty_layers(router: Reading[RouterStatus], tenants: Reading[TenantsLayer],
                       egress: Reading[EgressSocket]) -> list[LayerReading]:
    """Every sovereignty layer: the router's three (from its /status; not known while it does
    not answer), the tenants' (from their records, whether the router runs or not), and the
    egress socket's."""
    layers: list[LayerReading] = []
    if router.status == "ok":
        sovereignty = router.value().sovereignty
        for layer in ("config", "connect-time", "kernel"):
            verdict = sovereignty.layers()[layer]
            layers.append(LayerReading(layer, verdict, sovereignty.detail))
    else:
        layers += [LayerReading(layer, None, f"the router did not answer: {router.detail}",
                                known=False) for layer in ("config", "connect-time", "kernel")]
    if tenants.status == "ok":
        layer = tenants.value()
        subject = tuple(sorted(name for name, verdict in layer.tenants.items()
                               if verdict is not True))
        layers.append(LayerReading("tenants", layer.verdict, layer.detail, subject=subject))
    else:
        layers.append(LayerReading("tenants", None, tenants.detail))
    layers.append(egress_socket_layer(egress))
    return layers


def sovereignty(layers: Sequence[LayerReading]) -> list[CheckResult]:
    """One check per layer (`sovereignty:<layer>`): a problem unless it is in force."""
    results = []
    for layer in layers:
        name = f"sovereignty:{layer.layer}"
        if not layer.known:
            results.append(CheckResult(name, Status.MISSING_SOURCE, layer.detail))
        elif layer.verdict:
            results.append(_ok(name, layer.detail))
        else:
            what = "not in force" if layer.verdict is False else "not known"
            results.append(_problem(name, f"{what}: {layer.detail}"))
    return results
