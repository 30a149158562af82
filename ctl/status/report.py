"""The status report as plain data (what `mushishi status --json` prints) and the problems
found in it. Pure: no I/O, no clock; the screen is drawn from it by screen.py.

Every source is a `Reading` (shared/readings.py): `ok` with its data, `down` (a daemon
that should answer did not: stopped, hung, unreachable), `missing` (nothing to read yet,
or a part that is not installed: not a fault) or `error` (the source exists but cannot be
read: permissions, a damaged file). A source that is down never hides the others: the
report is built from whatever answered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from mushishi.shared.readings import Reading
from mushishi.shared.router_status import RouterStatus

if TYPE_CHECKING:
    from mushishi.shared.gpumode import GpuModeProperties
    from mushishi.shared.tenant_confinement import TenantsLayer

# Source names, in the order the screen shows their troubles.
SOURCES = ("config", "systemd", "gpud", "router", "tenants", "switches", "cpu-floor",
           "budgets", "backup", "watchdog", "firewall", "bench")

# The units whose state the screen always shows (others only when they failed).
ALWAYS_ON = ("mushishi-router.service", "mushishi-egress.service", "mushishi-gpud.service",
             "mushishi-cpu-floor.service")
TIMERS = ("mushishi-watchdog.timer", "mushishi-backup.timer", "mushishi-backup-check.timer",
          "mushishi-bench.timer")


# -- small helpers -----------------------------------------------------------------------

def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time (naive means UTC), or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def age_s(value: Any, now: datetime) -> float | None:
    """Seconds since an ISO time (negative for the future), or None."""
    parsed = parse_time(value)
    return None if parsed is None else (now - parsed).total_seconds()


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


# -- the report --------------------------------------------------------------------------

@dataclass
class Report:
    """Everything `mushishi status --json` prints, plus the problems it found, and the
    router's /status as its typed contract (the screen's router rows are drawn from it)."""

    data: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    router: RouterStatus | None = None


def build_report(readings: Mapping[str, Reading[Any]], now: datetime, host: str) -> Report:
    """The report from whatever the sources said."""
    problems: list[str] = []
    data: dict[str, Any] = {
        "time": _iso(now), "host": host,
        "sources": {name: {"status": reading.status, "detail": reading.detail,
                           "elapsed_ms": round(reading.elapsed_s * 1000, 1)}
                    for name, reading in readings.items()},
    }
    data["unavailable"] = [name for name in SOURCES if name in readings
                           and readings[name].failed]
    for name in data["unavailable"]:
        problems.append(f"{name}: {readings[name].detail}")
    systemd = _data(readings, "systemd")
    data["units"], data["failed_units"], data["timers"] = _units(systemd, now)
    for unit in data["failed_units"]:
        problems.append(f"{unit} failed")
    data["gpu"] = _gpu(_data(readings, "gpud"))
    if data["gpu"] and data["gpu"]["state"] == "failed":
        problems.append(f"GPU mode {data['gpu']['active_mode'] or 'none'} failed: "
                        f"{data['gpu']['state_reason']}")
    router = _data(readings, "router")
    data["router"] = _router(router)
    data["tenants"] = _tenants(_data(readings, "tenants"))
    if router is not None:
        sovereignty = router.sovereignty
        for layer, value in sovereignty.layers().items():
            if value is False and layer != "tenants":
                problems.append(f"sovereignty layer {layer} is not in force: "
                                f"{sovereignty.detail}")
        if router.reload.pending_restart:
            problems.append("router: restart needed to apply "
                            f"{', '.join(router.reload.pending_restart)} (a reload was "
                            "refused; `systemctl restart mushishi-router`)")
    tenants = data["tenants"] or ({"verdict": router.sovereignty.tenants,
                                   "detail": router.sovereignty.tenants_detail}
                                  if router is not None else None)
    if tenants is not None and tenants["verdict"] is False:
        problems.append(f"sovereignty layer tenants is not in force: {tenants['detail']}")
    data["disabled_checks"] = [
        {"name": found.name, "value": found.value, "what": found.what, "unit": found.unit,
         "source": found.source, "fix": found.fix}
        for found in _data(readings, "switches") or ()]
    for found in _data(readings, "switches") or ():
        problems.append(f"test-only switch {found.line()}")
    data["cpu_floor"] = _cpu_floor(readings.get("cpu-floor"), systemd)
    if data["cpu_floor"] and not data["cpu_floor"]["serving"] \
            and "cpu-floor" not in data["unavailable"]:
        problems.append(f"CPU floor: {data['cpu_floor']['detail']}")
    data["budgets"] = _budgets(readings.get("budgets"))
    data["backup"] = _backup(_data(readings, "backup"), now)
    backup_last = (data["backup"] or {}).get("last")
    if backup_last and backup_last["outcome"] not in ("ok", "warning"):
        problems.append(f"last backup {backup_last['outcome']}")
    if backup_last and backup_last.get("verify") in ("failed", "inconclusive"):
        problems.append(f"restore verification {backup_last['verify']}")
    check = (data["backup"] or {}).get("check")
    if check and check["outcome"] != "ok":
        problems.append(f"last restic check {check['outcome']}")
    for copy in (data["backup"] or {}).get("copies", []):
        if copy["outcome"] == "failed":
            problems.append(f"copy to {copy['repository']} failed")
    data["watchdog"] = _watchdog(_data(readings, "watchdog"), now)
    for item in (data["watchdog"] or {}).get("problems", []):
        problems.append(f"watchdog: {item['name']}: {item['detail']}")
    data["firewall"] = _firewall(_data(readings, "firewall"), now)
    firewall = data["firewall"] or {}
    if firewall.get("pending"):
        problems.append("firewall change waiting for `mushishi firewall confirm`")
    if (firewall.get("last") or {}).get("action") in ("rolled-back", "rejected", "failed"):
        problems.append(f"last firewall change: {firewall['last']['action']}")
    data["bench"] = _bench(_data(readings, "bench"), now)
    for target, row in (data["bench"] or {}).items():
        if row["regression"]:
            problems.append(f"bench: {target} regressed to {row['tokens_per_s']} tok/s")
    data["problems"] = problems
    return Report(data, problems, router)


def _data(readings: Mapping[str, Reading[Any]], name: str) -> Any:
    reading = readings.get(name)
    return reading.data if reading is not None and reading.status == "ok" else None


def _units(systemd: Any, now: datetime) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    if not isinstance(systemd, Mapping):
        return {}, [], {}
    units: dict[str, Any] = {}
    failed: list[str] = []
    for name, unit in sorted((systemd.get("units") or {}).items()):
        units[name] = {"active": unit.get("active", ""), "sub": unit.get("sub", ""),
                       "load": unit.get("load", ""), "status_text": unit.get("status_text", "")}
        if unit.get("active") == "failed":
            failed.append(name)
    timers: dict[str, Any] = {}
    for name, timer in sorted((systemd.get("timers") or {}).items()):
        next_run = timer.get("next")
        last = timer.get("last")
        timers[name] = {"active": timer.get("active", ""), "next": next_run, "last": last,
                        "next_in_s": -age_s(next_run, now) if next_run else None,
                        "last_age_s": age_s(last, now) if last else None}
    return units, failed, timers


def _gpu(props: GpuModeProperties | None) -> dict[str, Any] | None:
    if props is None:
        return None
    return {
        "active_mode": props.active_mode, "state": props.state,
        "state_reason": props.state_reason, "progress": props.progress,
        "last_switch_reason": props.last_switch_reason,
        "modes": list(props.modes),
        "holds": [{"mode": h.mode, "holder": h.holder, "reason": h.reason}
                  for h in props.holds],
        "vram_used_mib": props.vram_used_mib, "vram_total_mib": props.vram_total_mib,
        "temperature_c": props.temperature_c, "power_w": props.power_w,
        "util_percent": props.util_percent, "throttled": props.throttled,
    }


def _router(status: RouterStatus | None) -> dict[str, Any] | None:
    if status is None:
        return None
    body = status.to_json()
    return {key: body[key] for key in ("version", "draining", "in_flight", "sovereignty",
                                       "backends", "profiles", "cloud_share", "reload")}


def _tenants(layer: TenantsLayer | None) -> dict[str, Any] | None:
    if layer is None:
        return None
    return {"verdict": layer.verdict, "detail": layer.detail,
            "tenants": {name: {"confined": verdict, "detail": layer.details.get(name, "")}
                        for name, verdict in sorted(layer.tenants.items())}}


def _cpu_floor(reading: Reading[Any] | None, systemd: Any) -> dict[str, Any] | None:
    unit = ((systemd or {}).get("units") or {}).get("mushishi-cpu-floor.service") \
        if isinstance(systemd, Mapping) else None
    if reading is None and unit is None:
        return None
    floor: dict[str, Any] = {"unit": (unit or {}).get("active", "unknown"),
                             "status_text": (unit or {}).get("status_text", "")}
    data = reading.data if reading is not None and reading.status == "ok" else {}
    alias = data.get("alias") if data else None
    models = list(data.get("models", [])) if data else []
    floor.update(alias=alias, models=models, serving=bool(alias) and alias in models
                 and floor["unit"] in ("active", "reloading", "unknown"))
    if floor["serving"]:
        floor["detail"] = f"serving {alias}"
    elif reading is not None and reading.status != "ok":
        floor["detail"] = reading.detail
    elif alias and alias not in models:
        floor["detail"] = (f"llama-server answers but does not list {alias} "
                           f"(lists {', '.join(models) or 'nothing'})")
    else:
        floor["detail"] = f"mushishi-cpu-floor.service is {floor['unit']}"
    return floor


def _budgets(reading: Reading[Any] | None) -> dict[str, Any] | None:
    if reading is None:
        return None
    if reading.status != "ok":
        return {"available": False, "detail": reading.detail, "backends": {}}
    backends = {name: dict(values) for name, values in sorted(dict(reading.data).items())}
    return {"available": True, "detail": "", "backends": backends}


def _backup(files: Any, now: datetime) -> dict[str, Any] | None:
    if not isinstance(files, Mapping):
        return None
    result: dict[str, Any] = {"last": None, "check": None}
    last = files.get("last")
    if isinstance(last, Mapping):
        verify = last.get("verify") if isinstance(last.get("verify"), Mapping) else {}
        finished = last.get("finished") or last.get("time")
        result["last"] = {
            "time": finished, "age_s": age_s(finished, now),
            "outcome": str(last.get("outcome", "unknown")),
            "verify": str(verify.get("outcome", "skipped")) if verify else "skipped",
            "verify_files": verify.get("files_checked") if verify else None,
            "snapshot_ids": list(last.get("snapshot_ids") or []),
            "warnings": list(last.get("warnings") or []),
            "errors": list(last.get("errors") or []),
            "last_success_time": last.get("last_success_time"),
            "last_success_age_s": age_s(last.get("last_success_time"), now),
        }
    check = files.get("check")
    if isinstance(check, Mapping):
        finished = check.get("finished") or check.get("time")
        result["check"] = {"time": finished, "age_s": age_s(finished, now),
                           "outcome": str(check.get("outcome", "unknown")),
                           "error": check.get("error")}
    result["copies"] = _copies(last, now) if isinstance(last, Mapping) else []
    return result


def _copies(last: Mapping[str, Any], now: datetime) -> list[dict[str, Any]]:
    """Each off-box copy of the last run: outcome, age of its newest snapshot, last verify."""
    finished = last.get("finished") or last.get("time")
    copies = []
    for entry in last.get("copies") or []:
        if not isinstance(entry, Mapping):
            continue
        copies.append({
            "repository": str(entry.get("repository", "?")),
            "outcome": str(entry.get("outcome", "unknown")),
            "age_s": age_s(finished, now),
            "newest_snapshot_age_s": age_s(entry.get("newest_snapshot_time"), now),
            "verified": bool(entry.get("verified")),
            "last_verified_age_s": age_s(entry.get("last_verified_time"), now),
            "error": entry.get("error"),
        })
    return copies


def _watchdog(last: Any, now: datetime) -> dict[str, Any] | None:
    if not isinstance(last, Mapping):
        return None
    checks = [c for c in last.get("checks") or [] if isinstance(c, Mapping)]
    return {
        "time": last.get("time"), "age_s": age_s(last.get("time"), now),
        "problems": [{"name": c.get("name", ""), "detail": c.get("detail", "")}
                     for c in checks if c.get("status") == "problem"],
        "not_checked": [{"name": c.get("name", ""), "detail": c.get("detail", "")}
                        for c in checks if c.get("status") == "missing-source"],
        "checks": len(checks),
        "delivery": last.get("delivery"),
    }


def _firewall(files: Any, now: datetime) -> dict[str, Any] | None:
    if not isinstance(files, Mapping):
        return None
    last = files.get("last")
    pending = files.get("pending")
    result: dict[str, Any] = {"last": None, "pending": None}
    if isinstance(last, Mapping):
        result["last"] = {"time": last.get("time"), "age_s": age_s(last.get("time"), now),
                          "action": str(last.get("action", "unknown")),
                          "detail": str(last.get("detail", ""))}
    if isinstance(pending, Mapping):
        deadline = pending.get("deadline")
        left = None
        if isinstance(deadline, int | float):
            left = deadline - now.timestamp()
        result["pending"] = {"deadline_in_s": left, "guard_pid": pending.get("guard_pid")}
    return result


def _bench(rows: Any, now: datetime) -> dict[str, Any] | None:
    if not isinstance(rows, Sequence):
        return None
    newest: dict[str, Mapping[str, str]] = {}
    for row in rows:
        key = row.get("target", "")
        if row.get("backend"):
            key = f"{key} ({row['backend']})"
        if key not in newest or row.get("time", "") >= newest[key].get("time", ""):
            newest[key] = row
    return {key: {"time": row.get("time"), "age_s": age_s(row.get("time"), now),
                  "tokens_per_s": _number(row.get("tokens_per_s")),
                  "regression": str(row.get("regression", "")).lower() == "true"}
            for key, row in sorted(newest.items())}


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def exit_status(report: Report) -> int:
    """0 when every source answered and nothing needs attention, 1 otherwise."""
    return 1 if report.problems else 0
