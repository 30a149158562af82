"""The one-screen view of a status report (report.py), with colour only when asked."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mushishi.ctl.status.report import ALWAYS_ON, Report
from mushishi.shared.router_status import RouterStatus


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
        if gpu.get("last_switch_reason"):
            text += paint("dim", f" · last switch: {gpu['last_switch_reason']}")
        row("mode", text)
        holds = "; ".join(f"{h['mode']} by {h['holder']}" + (f" ({h['reason']})"
                                                              if h["reason"] else "")
                          for h in gpu["holds"]) or "none"
        row("holds", holds)
        row("gpu", _gpu_line(gpu, paint))
    else:
        row("mode", unavailable("gpud"))
    router = report.router
    tenants = data["tenants"]
    if router is not None:
        layers = router.sovereignty.layers()
        if tenants is not None:  # read from the tenants' own records: the freshest
            layers["tenants"] = tenants["verdict"]
        text = "sovereignty: " + ", ".join(f"{layer} {paint.mark(value)}"
                                           for layer, value in layers.items())
        text += f" · {router.in_flight} in flight"
        if router.draining:
            text += " · " + paint("warn", "draining")
        row("router", text)
        if router.reload.pending_restart:
            row("", paint("bad", "restart needed: ") + router.reload.detail)
        _backend_rows(router, paint, row)
        _profile_rows(router, paint, row)
        shares = [f"{name} {share.hour:.0%} last hour, {share.day:.0%} "
                  f"last day ({share.requests_day} requests)"
                  for name, share in sorted(router.cloud_share.items())
                  if name in router.profiles
                  and router.profiles[name].tier in ("T2", "T3")]
        if shares:
            row("cloud", "; ".join(shares))
    else:
        row("router", unavailable("router"))
    _tenant_rows(tenants, router is None, paint, row, unavailable)
    for found in data["disabled_checks"]:
        row("test-only", paint("bad", f"{found['name']}={found['value']}") + paint(
            "dim", f" ({found['what']}) ") + (f"in {found['unit']}" if found["unit"] else
                                               "for every unit started from now on")
            + f", from {found['source']}")
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


def _tenant_rows(tenants: Mapping[str, Any] | None, router_down: bool, paint: _Paint,
                 row: Any, unavailable: Any) -> None:
    """The tenants layer (✓/✗/? like the router's) and each running tenant's probe."""
    if tenants is None:
        row("tenants", unavailable("tenants"))
        return
    running = tenants["tenants"]
    if not running:
        text = paint.mark(tenants["verdict"]) + " " + paint("dim", tenants["detail"])
        if router_down:  # the router row does not show the layer then
            row("tenants", "sovereignty: " + text)
        elif tenants["verdict"] is not True:
            row("tenants", text)
        return
    label = "tenants"
    for name, entry in running.items():
        detail = entry["detail"].removeprefix(f"tenant {name}: ")
        kind = "dim" if entry["confined"] else "bad" if entry["confined"] is False else "warn"
        row(label, f"{name} {paint.mark(entry['confined'])} " + paint(kind, detail))
        label = ""


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


def _backend_rows(router: RouterStatus, paint: _Paint, row: Any) -> None:
    using: dict[str, list[str]] = {}
    for name, profile in router.profiles.items():
        if profile.would_use:
            using.setdefault(profile.would_use, []).append(name)
    label = "backends"
    width = max((len(n) for n in router.backends), default=0)
    for name, backend in sorted(router.backends.items()):
        state = backend.state
        kind = {"up": "ok", "cloud": "dim", "mode_inactive": "dim", "unknown": "warn",
                "starting": "warn", "switching": "warn"}.get(state, "bad")
        where = "local" if backend.local else "cloud"
        load = f"{backend.in_flight} in flight"
        if backend.max_concurrency:
            load += f" of {backend.max_concurrency}"
        users = using.get(name)
        text = f"{name:<{width}}  {paint(kind, f'{state:<13}')} {where:<5} {load}"
        if users:
            text += f" · used by {', '.join(sorted(users))}"
        if state not in ("up", "cloud") and backend.reason:
            text += paint("dim", f" — {backend.reason}")
        row(label, text)
        label = ""


def _profile_rows(router: RouterStatus, paint: _Paint, row: Any) -> None:
    parts = []
    for name, profile in sorted(router.profiles.items()):
        target = profile.would_use
        answer = paint("ok", target) if target else paint("bad", "none")
        parts.append(f"{name} ({profile.tier}) → {answer}")
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
