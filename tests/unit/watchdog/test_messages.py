"""What to tell the phone (messages.py), decided with injected time: only problems, dedup,
recovery, weekly heartbeat, one alert per failed unit."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from mushishi.services.watchdog.checks import CheckResult, Status
from mushishi.services.watchdog.messages import (
    MAX_MESSAGE_BYTES,
    AlertState,
    heartbeat_due,
    plan_unit_failure,
    plan_watchdog,
    truncate,
)

# A Tuesday, in a zone east of UTC: the weekday is the box's local one.
LOCAL = timezone(timedelta(hours=9))
TUESDAY = datetime(2026, 3, 10, 9, 0, tzinfo=LOCAL)
REPEAT = timedelta(hours=24)


def ok(name: str) -> CheckResult:
    return CheckResult(name, Status.OK, "fine")


def problem(name: str, detail: str = "bad") -> CheckResult:
    return CheckResult(name, Status.PROBLEM, detail)


def missing(name: str) -> CheckResult:
    return CheckResult(name, Status.MISSING_SOURCE, "no source")


def plan(state: AlertState, results: list[CheckResult], now: datetime,
         weekday: str = "monday") -> tuple[list, AlertState]:
    return plan_watchdog(state, results, now=now, repeat_after=REPEAT,
                         heartbeat_weekday=weekday, hostname="box")


# A state whose heartbeat is already done this week, so only problem logic shows.
QUIET = AlertState(last_heartbeat=date(2026, 3, 9))


def test_nothing_is_sent_when_all_is_well() -> None:
    messages, state = plan(QUIET, [ok("disk:/"), missing("gpu")], TUESDAY)
    assert messages == [] and state.notified == {}


def test_problems_are_sent_once_then_deduplicated_then_reminded() -> None:
    results = [problem("disk:/data", "93% used"), ok("backup-age"), missing("gpu")]
    first, state = plan(QUIET, results, TUESDAY)
    assert [m.kind for m in first] == ["problems"]
    message = first[0]
    assert message.title == "mushishi on box: 1 problem"
    assert "- **disk:/data**: 93% used" in message.body
    assert "Not checked: gpu (no source)" in message.body
    assert message.priority == 4 and message.tags == ("warning",)

    # Same set, new numbers, an hour later: nothing.
    again, state = plan(state, [problem("disk:/data", "94% used")],
                        TUESDAY + timedelta(hours=1))
    assert again == []
    # Still there after repeat_after: a reminder.
    later, state = plan(state, [problem("disk:/data", "95% used")],
                        TUESDAY + timedelta(hours=24))
    assert [m.kind for m in later] == ["reminder"]
    assert later[0].title == "mushishi on box: still 1 problem"


def test_a_changed_problem_set_is_sent_at_once() -> None:
    _, state = plan(QUIET, [problem("disk:/data")], TUESDAY)
    messages, state = plan(state, [problem("disk:/data"), problem("unit:mushishi-gpud.service")],
                           TUESDAY + timedelta(minutes=5))
    assert [m.kind for m in messages] == ["problems"]
    assert "New: unit:mushishi-gpud.service" in messages[0].body
    messages, state = plan(state, [problem("unit:mushishi-gpud.service")],
                           TUESDAY + timedelta(minutes=10))
    assert "Cleared: disk:/data" in messages[0].body


def test_recovery_is_sent_once_when_problems_clear() -> None:
    _, state = plan(QUIET, [problem("backup-age"), problem("disk:/")], TUESDAY)
    messages, state = plan(state, [ok("backup-age"), ok("disk:/")],
                           TUESDAY + timedelta(hours=2))
    assert [m.kind for m in messages] == ["recovery"]
    assert messages[0].title == "mushishi on box: all clear"
    assert "- **backup-age** cleared" in messages[0].body and messages[0].priority == 3
    messages, state = plan(state, [ok("backup-age")], TUESDAY + timedelta(hours=3))
    assert messages == []


def test_problem_after_recovery_is_sent_even_within_repeat_after() -> None:
    _, state = plan(QUIET, [problem("disk:/")], TUESDAY)
    _, state = plan(state, [ok("disk:/")], TUESDAY + timedelta(hours=1))
    messages, _ = plan(state, [problem("disk:/")], TUESDAY + timedelta(hours=2))
    assert [m.kind for m in messages] == ["problems"]


@pytest.mark.parametrize(("last", "today", "weekday", "due"), [
    (date(2026, 3, 2), date(2026, 3, 9), "monday", True),    # Monday, last one a week ago
    (date(2026, 3, 9), date(2026, 3, 9), "monday", False),   # already sent today
    (date(2026, 3, 9), date(2026, 3, 10), "monday", False),  # Tuesday after it
    (date(2026, 3, 9), date(2026, 3, 15), "monday", False),  # Sunday
    (date(2026, 3, 9), date(2026, 3, 16), "monday", True),   # next Monday
    (date(2026, 3, 2), date(2026, 3, 11), "monday", True),   # box was off on Monday: catch up
    (date(2026, 3, 9), date(2026, 3, 13), "friday", True),
    (None, date(2026, 3, 10), "monday", True),               # first run ever
])
def test_heartbeat_weekday(last: date | None, today: date, weekday: str, due: bool) -> None:
    assert heartbeat_due(last, today, weekday) is due


def test_heartbeat_on_the_local_weekday_with_injected_time() -> None:
    state = AlertState(last_heartbeat=date(2026, 3, 2))
    # 2026-03-08 23:30 UTC is already Monday 08:30 in UTC+9.
    monday_local = datetime(2026, 3, 9, 8, 30, tzinfo=LOCAL)
    messages, state = plan(state, [ok("disk:/"), missing("gpu")], monday_local)
    assert [m.kind for m in messages] == ["heartbeat"]
    heartbeat = messages[0]
    assert heartbeat.title == "mushishi on box: weekly heartbeat"
    assert "1 checks ok, 0 problems, 1 not checked" in heartbeat.body
    assert heartbeat.priority == 2
    assert state.last_heartbeat == date(2026, 3, 9)
    for hours in (1, 24, 24 * 6):
        messages, state = plan(state, [ok("disk:/")], monday_local + timedelta(hours=hours))
        assert messages == [], hours
    messages, state = plan(state, [ok("disk:/")], monday_local + timedelta(days=7))
    assert [m.kind for m in messages] == ["heartbeat"]


def test_state_round_trips_through_json() -> None:
    _, state = plan(AlertState(), [problem("disk:/")], TUESDAY)
    _, state = plan_unit_failure(state, "mushishi-router.service", summary="s", records=[],
                                 now=TUESDAY, repeat_after=REPEAT, hostname="box")
    assert AlertState.from_json(state.to_json()) == state
    assert AlertState.from_json(None) == AlertState()


def test_unit_failure_alert_carries_its_records_and_is_deduplicated() -> None:
    records = [f"2026-03-10T09:00:0{i}+01:00 systemd: line {i}" for i in range(3)]
    message, state = plan_unit_failure(
        AlertState(), "mushishi-cpu-floor.service",
        summary="mushishi-cpu-floor.service is failed (failed), result exit-code",
        records=records, now=TUESDAY, repeat_after=REPEAT, hostname="box")
    assert message is not None
    assert message.title == "mushishi on box: mushishi-cpu-floor.service failed"
    assert message.body.startswith("mushishi-cpu-floor.service is failed (failed), result")
    assert "```\n" + "\n".join(records) + "\n```" in message.body
    assert message.tags == ("rotating_light",) and message.priority == 4
    again, state = plan_unit_failure(state, "mushishi-cpu-floor.service", summary="s",
                                     records=[], now=TUESDAY + timedelta(hours=1),
                                     repeat_after=REPEAT, hostname="box")
    assert again is None
    other, state = plan_unit_failure(state, "mushishi-router.service", summary="s",
                                     records=[], now=TUESDAY + timedelta(hours=1),
                                     repeat_after=REPEAT, hostname="box")
    assert other is not None
    later, _ = plan_unit_failure(state, "mushishi-cpu-floor.service", summary="s",
                                 records=[], now=TUESDAY + timedelta(hours=25),
                                 repeat_after=REPEAT, hostname="box")
    assert later is not None


def test_long_tail_keeps_the_newest_lines_within_ntfy_size() -> None:
    records = [f"line {i:05d} " + "x" * 80 for i in range(500)]
    message, _ = plan_unit_failure(AlertState(), "u.service", summary="s", records=records,
                                   now=TUESDAY, repeat_after=REPEAT, hostname="box")
    assert message is not None
    assert len(message.body.encode()) <= MAX_MESSAGE_BYTES
    assert "line 00499" in message.body and "line 00000" not in message.body


def test_truncate_respects_utf8_and_says_so() -> None:
    text = "é" * 5000
    cut = truncate(text, 100)
    assert len(cut.encode()) <= 100 and cut.endswith("(truncated)")
    assert truncate("short") == "short"
