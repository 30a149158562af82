"""The status report as plain data, and the screen drawn from it. Pure: no I/O, no clock.

Every source is a `Reading`: `ok` with its data, `down` (a daemon that should answer did
not: stopped, hung, unreachable), `missing` (nothing to read yet, or a part that is not
installed: not a fault) or `error` (the source exists but cannot be read: permissions, a
damaged file). A source that is down never hides the others: the report is built from
whatever answered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

ReadingStatus = Literal["ok", "down", "missing", "error"]

# Source names, in the order the screen shows their troubles.
SOURCES = ("config", "systemd", "gpud", "router", "cpu-floor", "budgets", "backup",
           "watchdog", "firewall", "bench")

# The units whose state the screen always shows (others only when they failed).
ALWAYS_ON = ("mushishi-router.service", "mushishi-egress.service", "mushishi-gpud.service",
             "mushishi-cpu-floor.service")
TIMERS = ("mushishi-watchdog.timer", "mushishi-backup.timer", "mushishi-backup-check.timer",
          "mushishi-bench.timer")


@dataclass(frozen=True, slots=True)
class Reading:
    """What one source said, and how long it took to say it."""

    status: ReadingStatus
    data: Any = None
    detail: str = ""
    elapsed_s: float = 0.0


def ok(data: Any, elapsed_s: float = 0.0) -> Reading:
    """A source that answered."""
    return Reading("ok", data, "", elapsed_s)


def down(detail: str, elapsed_s: float = 0.0) -> Reading:
    """A daemon that should have answered and did not."""
    return Reading("down", None, detail, elapsed_s)


def missing(detail: str, elapsed_s: float = 0.0) -> Reading:
    """Nothing to read (yet), not a fault."""
    return Reading("missing", None, detail, elapsed_s)


def error(detail: str, elapsed_s: float = 0.0) -> Reading:
    """A source that exists but cannot be read."""
    return Reading("error", None, detail, elapsed_s)


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


def human_duration(seconds: float) -> str:
    """3 s, 4 min, 5 h, 2 d: the largest unit that fits (whole numbers)."""
    seconds = abs(seconds)
    for limit, unit, size in ((120, "s", 1), (7200, "min", 60), (172800, "h", 3600)):
        if seconds < limit:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds / 86400:.0f} d"


def ago(seconds: float | None) -> str:
    """'5 h ago', 'in 3 d' or 'never'."""
    if seconds is None:
        return "never"
    return f"in {human_duration(seconds)}" if seconds < 0 else f"{human_duration(seconds)} ago"


def count(value: float | int | None) -> str:
    """1234567 -> 1.2M, 950000 -> 950k, 1000 -> 1000; None -> ?"""
    if value is None:
        return "?"
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= max(size, 1e4):
            return f"{value / size:.1f}".removesuffix(".0") + suffix
    return f"{value:g}" if isinstance(value, float) else str(value)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


# -- the report --------------------------------------------------------------------------

@dataclass
class Report:
    """Everything `mushishi status --json` prints, plus the problems it found."""

    data: dict[str, Any]
    problems: list[str] = field(default_factory=list)


def build_report(readings: Mapping[str, Reading], now: datetime, host: str) -> Report:
    """The report from whatever the sources said."""
    problems: list[str] = []
    data: dict[str, Any] = {
        "time": _iso(now), "host": host,
        "sources": {name: {"status": reading.status, "detail": reading.detail,
                           "elapsed_ms": round(reading.elapsed_s * 1000, 1)}
                    for name, reading in readings.items()},
    }
    data["unavailable"] = [name for name in SOURCES if name in readings
                           and readings[name].status in ("down", "error")]
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
    data["router"] = _router(_data(readings, "router"))
    if data["router"]:
        sovereignty = data["router"]["sovereignty"]
        for layer in ("config", "connect_time", "kernel"):
            if sovereignty.get(layer) is False:
                problems.append(f"sovereignty layer {layer.replace('_', '-')} is not in force: "
                                f"{sovereignty.get('detail', '')}")
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
    return Report(data, problems)


def _data(readings: Mapping[str, Reading], name: str) -> Any:
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


def _gpu(props: Any) -> dict[str, Any] | None:
    if not isinstance(props, Mapping):
        return None
    holds = [{"mode": hold[0], "holder": hold[1], "reason": hold[2]}
             for hold in props.get("Holds") or [] if len(hold) == 3]
    return {
        "active_mode": props.get("ActiveMode", ""), "state": props.get("State", ""),
        "state_reason": props.get("StateReason", ""), "progress": props.get("Progress", ""),
        "modes": list(props.get("Modes") or []), "holds": holds,
        "vram_used_mib": props.get("VramUsedMiB"), "vram_total_mib": props.get("VramTotalMiB"),
        "temperature_c": props.get("GpuTemperatureC"), "power_w": props.get("GpuPowerW"),
        "util_percent": props.get("GpuUtilPercent"), "throttled": props.get("GpuThrottled"),
    }


def _router(status: Any) -> dict[str, Any] | None:
    if not isinstance(status, Mapping):
        return None
    return {
        "version": status.get("version"), "draining": status.get("draining", False),
        "in_flight": status.get("in_flight", 0),
        "sovereignty": dict(status.get("sovereignty") or {}),
        "backends": dict(status.get("backends") or {}),
        "profiles": dict(status.get("profiles") or {}),
        "cloud_share": dict(status.get("cloud_share") or {}),
    }


def _cpu_floor(reading: Reading | None, systemd: Any) -> dict[str, Any] | None:
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


def _budgets(reading: Reading | None) -> dict[str, Any] | None:
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


# -- the screen --------------------------------------------------------------------------

_COLOURS = {"ok": "32", "bad": "31", "warn": "33", "dim": "2", "bold": "1"}


class _Paint:
    def __init__(self, colour: bool) -> None:
        self.colour = colour

    def __call__(self, kind: str, text: str) -> str:
        if not self.colour or not text:
            return text
        return f"\x1b[{_COLOURS[kind]}m{text}\x1b[0m"

    def mark(self, value: bool | None) -> str:
        if value is None:
            return self("warn", "?")
        return self("ok", "✓") if value else self("bad", "✗")


def render(report: Report, *, colour: bool = False) -> str:
    """The one-screen view."""
    paint = _Paint(colour)
    data = report.data
    sources = data["sources"]
    lines: list[str] = [paint("bold", f"mushishi on {data['host']}") + paint(
        "dim", f" — {data['time']}")]

    def row(label: str, text: str) -> None:
        lines.append(f"{paint('dim', f'{label:<10}')}{text}")

    def unavailable(name: str) -> str:
        source = sources.get(name, {})
        kind = "bad" if source.get("status") in ("down", "error") else "dim"
        return paint(kind, source.get("detail") or "not read")

    gpu = data["gpu"]
    if gpu:
        state = gpu["state"]
        kind = {"ready": "ok", "off": "ok", "switching": "warn"}.get(state, "bad")
        text = f"{gpu['active_mode'] or 'none'} ({paint(kind, state)})"
        if gpu["state_reason"]:
            text += f" — {paint('bad', gpu['state_reason'])}"
        if gpu["progress"]:
            text += f" — {gpu['progress']}"
        row("mode", text)
        holds = "; ".join(f"{h['mode']} by {h['holder']}" + (f" ({h['reason']})"
                                                              if h["reason"] else "")
                          for h in gpu["holds"]) or "none"
        row("holds", holds)
        row("gpu", _gpu_line(gpu, paint))
    else:
        row("mode", unavailable("gpud"))
    router = data["router"]
    if router:
        sovereignty = router["sovereignty"]
        text = (f"sovereignty: config {paint.mark(sovereignty.get('config'))}, connect-time "
                f"{paint.mark(sovereignty.get('connect_time'))}, kernel "
                f"{paint.mark(sovereignty.get('kernel'))}")
        text += f" · {router['in_flight']} in flight"
        if router["draining"]:
            text += " · " + paint("warn", "draining")
        row("router", text)
        _backend_rows(router, paint, row)
        _profile_rows(router, paint, row)
        shares = [f"{name} {share.get('hour', 0):.0%} last hour, {share.get('day', 0):.0%} "
                  f"last day ({share.get('requests_day', 0)} requests)"
                  for name, share in sorted(router["cloud_share"].items())
                  if router["profiles"].get(name, {}).get("tier") in ("T2", "T3")]
        if shares:
            row("cloud", "; ".join(shares))
    else:
        row("router", unavailable("router"))
    _budget_row(data["budgets"], paint, row)
    floor = data["cpu_floor"]
    if floor:
        if floor["serving"] and floor["status_text"].startswith(floor["detail"]):
            text = paint("ok", floor["status_text"])
        else:
            text = paint("ok" if floor["serving"] else "bad", floor["detail"])
            if floor["status_text"]:
                text += paint("dim", f" — {floor['status_text']}")
        row("cpu floor", text)
    _backup_row(data["backup"], paint, row, unavailable)
    _watchdog_rows(data["watchdog"], paint, row, unavailable)
    _firewall_row(data["firewall"], paint, row, unavailable)
    bench = data["bench"]
    if bench:
        row("bench", "; ".join(
            f"{key} {value['tokens_per_s']:g} tok/s {ago(value['age_s'])}"
            + (paint("bad", " REGRESSION") if value["regression"] else "")
            for key, value in bench.items() if value["tokens_per_s"] is not None))
    elif sources.get("bench", {}).get("status") in ("missing", "error"):
        row("bench", unavailable("bench"))
    if data["timers"]:
        row("timers", " · ".join(
            f"{name.removeprefix('mushishi-').removesuffix('.timer')} "
            + (f"next {ago(-timer['next_in_s'])}" if timer["next_in_s"] is not None
               else paint("warn", f"not scheduled ({timer['active'] or 'not loaded'})"))
            for name, timer in data["timers"].items()))
    _unit_row(data, paint, row, unavailable)
    if data["unavailable"]:
        row("sources", paint("bad", "not answering: " + ", ".join(data["unavailable"])))
    others = [p for p in report.problems
              if not any(p.startswith(f"{name}: ") for name in data["unavailable"])]
    if others:
        row("attention", paint("bad", f"{len(others)} problem(s): ") + "; ".join(others))
    elif not report.problems:
        row("attention", paint("ok", "none: all well"))
    return "\n".join(lines)


def _gpu_line(gpu: Mapping[str, Any], paint: _Paint) -> str:
    parts = []
    used, total = gpu["vram_used_mib"], gpu["vram_total_mib"]
    if used is not None and total:
        parts.append(f"VRAM {used / 1024:.1f}/{total / 1024:.1f} GiB ({used / total:.0%})")
    if gpu["temperature_c"] is not None:
        parts.append(f"{gpu['temperature_c']} °C")
    if gpu["power_w"] is not None:
        parts.append(f"{gpu['power_w']:.0f} W")
    if gpu["util_percent"] is not None:
        parts.append(f"{gpu['util_percent']}% busy")
    if gpu["throttled"]:
        parts.append(paint("bad", "throttled"))
    return ", ".join(parts) or "no readings"


def _backend_rows(router: Mapping[str, Any], paint: _Paint, row: Any) -> None:
    using: dict[str, list[str]] = {}
    for name, profile in router["profiles"].items():
        if profile.get("would_use"):
            using.setdefault(profile["would_use"], []).append(name)
    label = "backends"
    width = max((len(n) for n in router["backends"]), default=0)
    for name, backend in sorted(router["backends"].items()):
        state = backend.get("state", "?")
        kind = {"up": "ok", "cloud": "dim", "mode_inactive": "dim", "unknown": "warn",
                "starting": "warn", "switching": "warn"}.get(state, "bad")
        where = "local" if backend.get("local") else "cloud"
        load = f"{backend.get('in_flight', 0)} in flight"
        if backend.get("max_concurrency"):
            load += f" of {backend['max_concurrency']}"
        users = using.get(name)
        text = f"{name:<{width}}  {paint(kind, f'{state:<13}')} {where:<5} {load}"
        if users:
            text += f" · used by {', '.join(sorted(users))}"
        if state not in ("up", "cloud") and backend.get("reason"):
            text += paint("dim", f" — {backend['reason']}")
        row(label, text)
        label = ""


def _profile_rows(router: Mapping[str, Any], paint: _Paint, row: Any) -> None:
    parts = []
    for name, profile in sorted(router["profiles"].items()):
        target = profile.get("would_use")
        answer = paint("ok", target) if target else paint("bad", "none")
        parts.append(f"{name} ({profile.get('tier')}) → {answer}")
    if parts:
        row("profiles", "  ".join(parts))


def _budget_row(budgets: Mapping[str, Any] | None, paint: _Paint, row: Any) -> None:
    if budgets is None:
        return
    if not budgets["available"]:
        row("budgets", paint("dim", budgets["detail"]))
        return
    parts = []
    for name, budget in budgets["backends"].items():
        pieces = []
        for used, limit, unit in (("requests_used", "requests_limit", "requests"),
                                  ("tokens_used", "tokens_limit", "tokens"),
                                  ("cost_used", "cost_limit", "spend")):
            if budget.get(limit) is not None:
                fraction = (budget.get(used) or 0) / budget[limit] if budget[limit] else 1.0
                kind = "bad" if fraction >= 1 else ("warn" if fraction >= 0.8 else "ok")
                pieces.append(paint(kind, f"{count(budget.get(used) or 0)}/"
                                          f"{count(budget[limit])} {unit}"))
        text = f"{name} " + (", ".join(pieces) if pieces else "no limits")
        if budget.get("cooldown_until"):
            text += paint("warn", f" (cooling down until {budget['cooldown_until']})")
        parts.append(text)
    row("budgets", "; ".join(parts) or "no cloud backend")


def _backup_row(backup: Mapping[str, Any] | None, paint: _Paint, row: Any,
                unavailable: Any) -> None:
    if backup is None:
        row("backup", unavailable("backup"))
        return
    last = backup["last"]
    if last is None:
        text = paint("warn", "no backup has run yet")
    else:
        good = last["outcome"] in ("ok", "warning")
        text = paint("ok" if good else "bad", last["outcome"]) + f" {ago(last['age_s'])}"
        verify = last["verify"]
        verify_kind = {"ok": "ok", "skipped": "dim"}.get(verify, "bad")
        detail = f" ({last['verify_files']} files)" if last.get("verify_files") else ""
        text += ", restore-verify " + paint(verify_kind, verify) + detail
        if not good and last["last_success_time"]:
            text += f", last success {ago(last['last_success_age_s'])}"
        if last["errors"]:
            text += paint("bad", f" — {last['errors'][0]}")
        elif last["warnings"]:
            text += paint("warn", f" — {len(last['warnings'])} warning(s): "
                                  f"{last['warnings'][0]}")
    check = backup["check"]
    if check is not None:
        text += "; check " + paint("ok" if check["outcome"] == "ok" else "bad",
                                   check["outcome"]) + f" {ago(check['age_s'])}"
    row("backup", text)
    for copy in backup.get("copies", []):
        row("copy", _copy_line(copy, paint))


def _copy_line(copy: Mapping[str, Any], paint: _Paint) -> str:
    """`REPOSITORY: ok 3 h ago, newest snapshot 3 h old, verified 3 h ago`."""
    kind = {"ok": "ok", "warning": "warn", "skipped": "dim"}.get(copy["outcome"], "bad")
    text = f"{copy['repository']}: " + paint(kind, copy["outcome"]) + f" {ago(copy['age_s'])}"
    newest = copy["newest_snapshot_age_s"]
    text += (f", newest snapshot {human_duration(newest)} old" if newest is not None
             else ", " + paint("bad", "no snapshot copied yet"))
    verified = copy["last_verified_age_s"]
    text += (f", verified {ago(verified)}" if verified is not None
             else ", " + paint("bad", "never verified"))
    if copy["outcome"] == "failed" and copy["error"]:
        text += paint("bad", f" — {copy['error']}")
    return text


def _watchdog_rows(watchdog: Mapping[str, Any] | None, paint: _Paint, row: Any,
                   unavailable: Any) -> None:
    if watchdog is None:
        row("watchdog", unavailable("watchdog"))
        return
    problems = watchdog["problems"]
    text = f"ran {ago(watchdog['age_s'])}: " + (
        paint("ok", f"{watchdog['checks']} checks, no problem") if not problems
        else paint("bad", f"{len(problems)} problem(s)"))
    if watchdog["not_checked"]:
        names = ", ".join(c["name"] for c in watchdog["not_checked"])
        text += paint("dim", f", not checked: {names}")
    row("watchdog", text)
    for item in problems:
        row("", paint("bad", f"{item['name']}: {item['detail']}"))


def _firewall_row(firewall: Mapping[str, Any] | None, paint: _Paint, row: Any,
                  unavailable: Any) -> None:
    if firewall is None:
        row("firewall", unavailable("firewall"))
        return
    last = firewall["last"]
    if last is None:
        text = paint("dim", "never applied (`mushishi firewall apply`)")
    else:
        good = last["action"] in ("confirmed", "restored", "applied")
        text = paint("ok" if good else "bad", last["action"]) + f" {ago(last['age_s'])}"
    pending = firewall["pending"]
    if pending:
        left = pending["deadline_in_s"]
        text += paint("warn", " · waiting for `mushishi firewall confirm`" + (
            f" (rolls back {ago(-left)})" if left is not None and left > 0 else ""))
    row("firewall", text)


def _unit_row(data: Mapping[str, Any], paint: _Paint, row: Any, unavailable: Any) -> None:
    units = data["units"]
    if not units:
        if data["sources"].get("systemd", {}).get("status") != "ok":
            row("units", unavailable("systemd"))
        return
    parts = []
    for name in ALWAYS_ON:
        unit = units.get(name)
        short = name.removeprefix("mushishi-").removesuffix(".service")
        if unit is None:
            parts.append(f"{short} " + paint("dim", "not loaded"))
            continue
        state = unit["active"]
        kind = "ok" if state == "active" else ("warn" if state in (
            "activating", "reloading", "inactive") else "bad")
        parts.append(f"{short} " + paint(kind, state))
    others = [name for name in data["failed_units"] if name not in ALWAYS_ON]
    if others:
        parts.append(paint("bad", "failed: " + ", ".join(others)))
    row("units", " · ".join(parts))
