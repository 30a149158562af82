"""The status report and screen from plain readings: every source's trouble is named, the
rest is still shown, colour only when asked."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from mushishi.ctl.status.report import build_report, exit_status
from mushishi.ctl.status.screen import ago, human_duration, render
from mushishi.ctl.status_cmd import use_colour
from mushishi.shared.disabled_checks import DisabledCheck
from mushishi.shared.gpumode import GpuModeProperties
from mushishi.shared.readings import Reading, down, error, missing, ok
from mushishi.shared.router_status import RouterStatus
from mushishi.shared.tenant_confinement import TenantsLayer

NOW = datetime(2026, 3, 11, 9, 0, tzinfo=UTC)


def iso(delta: timedelta) -> str:
    return (NOW + delta).isoformat()


GPUD = {"ActiveMode": "agent", "State": "ready", "StateReason": "", "Progress": "",
        "Modes": ["agent", "audio", "creative", "forensic", "off"],
        "Holds": [["agent", ":1.42", "client report"]], "VramTotalMiB": 32607,
        "VramUsedMiB": 24500, "GpuTemperatureC": 61, "GpuPowerW": 312.4,
        "GpuUtilPercent": 87, "GpuThrottled": False}
ROUTER = {
    "version": "0.1.0", "draining": False, "in_flight": 2,
    "sovereignty": {"config": True, "connect_time": True, "kernel": True, "tenants": True,
                    "detail": "EPERM",
                    "tenants_detail": "every running tenant is confined (vllm-agent)",
                    "tenant_verdicts": {"vllm-agent": True},
                    "summary": "config ✓, connect-time ✓, kernel ✓, tenants ✓"},
    "gpu": {"present": True, "active_mode": "agent", "state": "ready"},
    "backends": {
        "gpu": {"state": "up", "reason": "healthy", "local": True, "in_flight": 2,
                "max_concurrency": 4, "locality": "127.0.0.1 is local",
                "modes": ["agent", "forensic"], "queued": 0, "model": "nemotron"},
        "cpu": {"state": "down", "reason": "connection refused", "local": True,
                "in_flight": 0, "max_concurrency": None, "locality": "127.0.0.1 is local",
                "modes": None, "queued": 0, "model": "nemotron-cpu-prism"},
        "kimi": {"state": "cloud", "reason": "cloud", "local": False, "in_flight": 0,
                 "max_concurrency": None, "locality": "a public address", "modes": None,
                 "queued": 0, "model": "kimi-k2.6"}},
    "profiles": {
        "private": {"tier": "T1", "chain": ["gpu", "cpu"], "would_use": "gpu",
                    "reason": "gpu (healthy)", "queued": 0, "require_mode": None},
        "personal": {"tier": "T2", "chain": ["gpu", "cpu", "kimi"], "would_use": "gpu",
                     "reason": "gpu (healthy)", "queued": 0, "require_mode": None},
        "client": {"tier": "T1-strict", "chain": ["gpu"], "would_use": None,
                   "reason": "mode agent, needs forensic", "queued": 0,
                   "require_mode": "forensic"}},
    "cloud_share": {"personal": {"hour": 0.04, "day": 0.02, "requests_hour": 50,
                                 "requests_day": 300, "cloud_requests_hour": 2,
                                 "cloud_requests_day": 6},
                    "private": {"hour": 0, "day": 0, "requests_hour": 0, "requests_day": 9,
                                "cloud_requests_hour": 0, "cloud_requests_day": 0}},
    "reload": {"pending_restart": [], "detail": "no reload since the router started"},
}
SYSTEMD = {
    "units": {
        "mushishi-router.service": {"load": "loaded", "active": "active", "sub": "running",
                                    "status_text": "serving 3 profiles"},
        "mushishi-egress.service": {"load": "loaded", "active": "inactive", "sub": "dead"},
        "mushishi-gpud.service": {"load": "loaded", "active": "active", "sub": "running"},
        "mushishi-cpu-floor.service": {"load": "loaded", "active": "active",
                                       "sub": "running", "status_text": "ready: tiny"},
        "mushishi-tenant@vllm-agent.service": {"load": "loaded", "active": "active",
                                               "sub": "running"}},
    "timers": {"mushishi-watchdog.timer": {"active": "active", "next": iso(timedelta(hours=14)),
                                           "last": iso(timedelta(hours=-10))},
               "mushishi-bench.timer": {"active": "not-found", "next": None, "last": None}},
}
BACKUP = {"last": {"time": iso(timedelta(days=-2, minutes=-5)),
                   "finished": iso(timedelta(days=-2)), "outcome": "ok",
                   "verify": {"outcome": "ok", "files_checked": 20}, "snapshot_ids": ["ab"],
                   "warnings": [], "errors": [], "last_success_time": iso(timedelta(days=-2))},
          "check": {"finished": iso(timedelta(days=-12)), "outcome": "ok"}}
WATCHDOG = {"time": iso(timedelta(hours=-3)), "problems": ["disk:/data"], "checks": [
    {"name": "disk:/data", "status": "problem", "detail": "93.1% used (limit 90%)"},
    {"name": "gpu", "status": "ok", "detail": "61 °C"},
    {"name": "bench", "status": "missing-source", "detail": "no bench result yet"}]}
FIREWALL = {"last": {"time": iso(timedelta(days=-5)), "action": "confirmed", "detail": ""},
            "pending": None}
BUDGETS = {"kimi": {"requests_used": 12, "requests_limit": 1000, "tokens_used": 950_000,
                    "tokens_limit": 1_000_000, "cost_used": None, "cost_limit": None,
                    "day": "2026-03-11", "cooldown_until": None}}
BENCH = [{"time": iso(timedelta(days=-3)), "target": "profile:private", "backend": "gpu",
          "tokens_per_s": "85.20", "regression": "false"}]
CONFINED = ("tenant vllm-agent: from container vllm-agent: the box's tenant firewall refused "
            "a datagram to 192.0.2.1:9")
TENANTS = TenantsLayer(True, "every running tenant is confined (vllm-agent)",
                       {"vllm-agent": True}, {"vllm-agent": CONFINED})
LEAKY = TenantsLayer(False, "tenant vllm-agent: from container vllm-agent: a datagram to "
                     "192.0.2.1:9 left: nothing refused it within 1 s", {"vllm-agent": False},
                     {"vllm-agent": "tenant vllm-agent: from container vllm-agent: a datagram "
                      "to 192.0.2.1:9 left: nothing refused it within 1 s"})


def everything() -> dict[str, Reading]:
    return {"config": ok(None), "systemd": ok(SYSTEMD),
            "gpud": ok(GpuModeProperties.from_dbus(GPUD)),
            "router": ok(RouterStatus.from_json(ROUTER)),
            "cpu-floor": ok({"alias": "nemotron-cpu-prism", "models": ["nemotron-cpu-prism"]}),
            "budgets": ok(BUDGETS), "backup": ok(BACKUP), "watchdog": ok(WATCHDOG),
            "firewall": ok(FIREWALL), "bench": ok(BENCH), "tenants": ok(TENANTS),
            "switches": ok([])}


def test_a_healthy_box_shows_every_section_on_one_screen() -> None:
    report = build_report(everything(), NOW, "box")
    screen = render(report)
    assert report.data["unavailable"] == []
    for expected in (
        "mushishi on box",
        "agent (ready)",
        "agent by :1.42 (client report)",
        "VRAM 23.9/31.8 GiB (75%), 61 °C, 312 W, 87% busy",
        "sovereignty: config ✓, connect-time ✓, kernel ✓, tenants ✓ · 2 in flight",
        "vllm-agent ✓ from container vllm-agent: the box's tenant firewall refused",
        "gpu   up            local 2 in flight of 4 · used by personal, private",
        "cpu   down          local 0 in flight — connection refused",
        "client (T1-strict) → none",
        "personal 4% last hour, 2% last day (300 requests)",
        "kimi 12/1000 requests, 950k/1M tokens",
        "serving nemotron-cpu-prism",
        "ok 2 d ago, restore-verify ok (20 files); check ok 12 d ago",
        "ran 3 h ago: 1 problem(s)",
        "disk:/data: 93.1% used (limit 90%)",
        "not checked: bench",
        "confirmed 5 d ago",
        "profile:private (gpu) 85.2 tok/s 3 d ago",
        "watchdog next in 14 h",
        "bench not scheduled (not-found)",
        "router active · egress inactive · gpud active · cpu-floor active",
    ):
        assert expected in screen, f"{expected!r} not in:\n{screen}"
    assert "\x1b[" not in screen
    assert len(screen.splitlines()) <= 25  # one screen
    assert report.problems == ["watchdog: disk:/data: 93.1% used (limit 90%)"]
    assert exit_status(report) == 1
    json.dumps(report.data)  # the --json output is plain data


def test_a_stopped_daemon_is_named_and_the_rest_is_still_there() -> None:
    readings = everything()
    readings["gpud"] = down("mushishi-gpud is not on the system bus")
    readings["router"] = down("did not answer within 0.5 s (hung? `systemctl status "
                              "mushishi-router`)", 0.5)
    report = build_report(readings, NOW, "box")
    assert report.data["unavailable"] == ["gpud", "router"]
    assert report.data["gpu"] is None and report.data["router"] is None
    assert report.data["sources"]["router"] == {
        "status": "down", "elapsed_ms": 500.0,
        "detail": "did not answer within 0.5 s (hung? `systemctl status mushishi-router`)"}
    assert report.data["backup"]["last"]["outcome"] == "ok"  # the rest is still there
    assert report.data["cpu_floor"]["serving"] is True
    screen = render(report)
    assert "mode      mushishi-gpud is not on the system bus" in screen
    assert "router    did not answer within 0.5 s" in screen
    assert "not answering: gpud, router" in screen
    assert "serving nemotron-cpu-prism" in screen
    assert "gpud: mushishi-gpud is not on the system bus" in report.problems


@pytest.mark.parametrize(("name", "reading", "problem"), [
    ("router", ok(RouterStatus.from_json({**ROUTER, "sovereignty": {
        **ROUTER["sovereignty"], "kernel": False, "detail": "a datagram left",
        "summary": "config ✓, connect-time ✓, kernel ✗, tenants ✓"}})),
     "sovereignty layer kernel is not in force: a datagram left"),
    ("tenants", ok(LEAKY), "sovereignty layer tenants is not in force: tenant vllm-agent: "
     "from container vllm-agent: a datagram to 192.0.2.1:9 left: nothing refused it within "
     "1 s"),
    ("router", ok(RouterStatus.from_json({**ROUTER, "reload": {
        "pending_restart": ["backends.gpu", "router.listen"],
        "detail": "reload refused at 2026-01-01T00:00:00+00:00: …"}})),
     "router: restart needed to apply backends.gpu, router.listen (a reload was refused; "
     "`systemctl restart mushishi-router`)"),
    ("gpud", ok(GpuModeProperties.from_dbus(
        {**GPUD, "State": "failed", "StateReason": "tenant vllm-agent does not fit"})),
     "GPU mode agent failed: tenant vllm-agent does not fit"),
    ("backup", ok({**BACKUP, "last": {**BACKUP["last"], "outcome": "partial"}}),
     "last backup partial"),
    ("backup", ok({**BACKUP, "last": {**BACKUP["last"], "verify": {"outcome": "failed"}}}),
     "restore verification failed"),
    ("firewall", ok({"last": FIREWALL["last"], "pending": {"deadline": NOW.timestamp() + 40,
                                                           "guard_pid": 7}}),
     "firewall change waiting for `mushishi firewall confirm`"),
    ("cpu-floor", ok({"alias": "nemotron-cpu-prism", "models": ["model.gguf"]}),
     "CPU floor: llama-server answers but does not list nemotron-cpu-prism (lists "
     "model.gguf)"),
    ("bench", ok([{**BENCH[0], "regression": "true"}]),
     "bench: profile:private (gpu) regressed to 85.2 tok/s"),
    ("backup", error("permission denied on /var/lib/mushishi/backup/last.json (run as root)"),
     "backup: permission denied on /var/lib/mushishi/backup/last.json (run as root)"),
])
def test_each_trouble_becomes_a_problem_naming_it(name: str, reading: Reading,
                                                  problem: str) -> None:
    readings = everything()
    readings["watchdog"] = ok({**WATCHDOG, "checks": []})
    readings[name] = reading
    report = build_report(readings, NOW, "box")
    assert problem in report.problems, report.problems
    render(report)  # and the screen draws it


def test_nothing_yet_is_not_a_problem() -> None:
    readings = everything()
    readings["watchdog"] = missing("the watchdog has not run yet")
    readings["bench"] = missing("no bench results yet")
    readings["budgets"] = missing("no budget ledger yet (no cloud request has gone through "
                                  "the egress)")
    readings["backup"] = ok({"last": None, "check": None})
    readings["firewall"] = ok({"last": None, "pending": None})
    report = build_report(readings, NOW, "box")
    assert report.problems == [] and exit_status(report) == 0
    screen = render(report)
    assert "budgets   no budget ledger yet" in screen
    assert "backup    no backup has run yet" in screen
    assert "watchdog  the watchdog has not run yet" in screen
    assert "firewall  never applied" in screen
    assert "attention none: all well" in screen


def test_colour_marks_only_when_asked() -> None:
    screen = render(build_report(everything(), NOW, "box"), colour=True)
    assert "\x1b[32m✓\x1b[0m" in screen and "\x1b[31m" in screen


@pytest.mark.parametrize(("choice", "tty", "environ", "expected"), [
    ("auto", True, {}, True),
    ("auto", False, {}, False),
    ("auto", True, {"NO_COLOR": "1"}, False),
    ("auto", True, {"TERM": "dumb"}, False),
    ("always", False, {"NO_COLOR": "1"}, True),
    ("never", True, {}, False),
])
def test_colour_on_a_terminal_only_and_never_with_no_color(
        choice: str, tty: bool, environ: dict[str, str], expected: bool) -> None:
    assert use_colour(choice, tty, environ) is expected


@pytest.mark.parametrize(("seconds", "text"), [
    (5, "5 s"), (119, "119 s"), (600, "10 min"), (7199, "120 min"), (18000, "5 h"),
    (172800, "2 d"), (-3600, "60 min")])
def test_human_duration_picks_the_largest_unit(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_ago_says_past_future_and_never() -> None:
    assert ago(90) == "90 s ago" and ago(-7200) == "in 2 h" and ago(None) == "never"


def test_every_json_key_is_documented() -> None:
    from tests.paths import REPO

    text = (REPO / "docs" / "observability.md").read_text()
    section = text.split("### `--json`", 1)[1].split("\n## ", 1)[0]
    report = build_report(everything(), NOW, "box")
    undocumented = [key for key in report.data if f"`{key}`" not in section]
    assert undocumented == [], f"add to docs/observability.md's --json table: {undocumented}"
    for source in report.data["sources"]:
        assert f"`{source}`" in section, source


def test_an_unconfined_tenant_is_named_with_what_its_probe_saw_even_with_the_router_down(
        ) -> None:
    readings = everything()
    readings["tenants"] = ok(LEAKY)
    screen = render(build_report(readings, NOW, "box"))
    assert "sovereignty: config ✓, connect-time ✓, kernel ✓, tenants ✗ · 2 in flight" in screen
    assert ("tenants   vllm-agent ✗ from container vllm-agent: a datagram to 192.0.2.1:9 left: "
            "nothing refused it within 1 s") in screen
    readings["router"] = down("the router's socket does not exist")
    report = build_report(readings, NOW, "box")
    assert report.data["tenants"] == {
        "verdict": False, "detail": LEAKY.detail,
        "tenants": {"vllm-agent": {"confined": False, "detail": LEAKY.details["vllm-agent"]}}}
    assert f"sovereignty layer tenants is not in force: {LEAKY.detail}" in report.problems
    assert "tenants   vllm-agent ✗ from container vllm-agent" in render(report)


def test_no_tenant_running_reads_confined_and_shows_with_the_router_down() -> None:
    readings = everything()
    readings["tenants"] = ok(TenantsLayer(True, "no tenant is running", {}))
    readings["router"] = down("the router's socket does not exist")
    report = build_report(readings, NOW, "box")
    assert "tenants   sovereignty: ✓ no tenant is running" in render(report)
    assert not [p for p in report.problems if "tenants" in p]


def test_a_test_only_switch_is_named_with_where_it_is_set_and_how_to_remove_it() -> None:
    readings = everything()
    readings["switches"] = ok([
        DisabledCheck("MUSHISHI_TEST_DISABLE_CONNECT_CHECK", "1", "turns the router's "
                      "connect-time sovereignty check off", None, "`systemctl "
                      "set-environment` (the service manager's environment, `systemctl "
                      "show-environment`)", "`systemctl unset-environment "
                      "MUSHISHI_TEST_DISABLE_CONNECT_CHECK`, then restart the units started "
                      "since"),
        DisabledCheck("MUSHISHI_TEST_DISABLE_CONNECT_CHECK", "1", "turns the router's "
                      "connect-time sovereignty check off", "mushishi-router.service",
                      "drop-in /etc/systemd/system/mushishi-router.service.d/zz-test.conf",
                      "remove its Environment= line, then `systemctl daemon-reload` and "
                      "`systemctl restart mushishi-router.service`")])
    report = build_report(readings, NOW, "box")
    assert [entry["source"] for entry in report.data["disabled_checks"]] == [
        "`systemctl set-environment` (the service manager's environment, `systemctl "
        "show-environment`)",
        "drop-in /etc/systemd/system/mushishi-router.service.d/zz-test.conf"]
    assert ("test-only switch MUSHISHI_TEST_DISABLE_CONNECT_CHECK=1 (turns the router's "
            "connect-time sovereignty check off) in mushishi-router.service, from drop-in "
            "/etc/systemd/system/mushishi-router.service.d/zz-test.conf: remove its "
            "Environment= line, then `systemctl daemon-reload` and `systemctl restart "
            "mushishi-router.service`") in report.problems
    screen = render(report)
    assert ("test-only MUSHISHI_TEST_DISABLE_CONNECT_CHECK=1 (turns the router's connect-time "
            "sovereignty check off) for every unit started from now on, from `systemctl "
            "set-environment`") in screen
    assert ("MUSHISHI_TEST_DISABLE_CONNECT_CHECK=1 (turns the router's connect-time "
            "sovereignty check off) in mushishi-router.service, from drop-in "
            "/etc/systemd/system/mushishi-router.service.d/zz-test.conf") in screen
    assert exit_status(report) == 1
    json.dumps(report.data)
