"""`mushishi audit`'s pure parts: --since durations, --from times, the window, the table."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta, timezone

import pytest

from mushishi.ctl.audit_cmd import parse_duration, parse_time, render, start_of
from mushishi.services.egress.audit import AuditEntry, Finish

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
PARIS = timezone(timedelta(hours=1))


@pytest.mark.parametrize(("text", "expected"), [
    ("90s", timedelta(seconds=90)),
    ("30m", timedelta(minutes=30)),
    ("12h", timedelta(hours=12)),
    ("7d", timedelta(days=7)),
    ("2w", timedelta(weeks=2)),
    ("1d12h", timedelta(days=1, hours=12)),
    ("1h30m", timedelta(minutes=90)),
    ("1.5h", timedelta(minutes=90)),
    (" 7D ", timedelta(days=7)),
])
def test_parse_duration_accepts_numbers_with_units(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "7", "d", "7x", "7 d", "-7d", "7days", "1d 12h", "7d!"])
def test_parse_duration_refuses_anything_else_naming_the_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a duration: use .*s, m, h, d or w"):
        parse_duration(text)


def test_parse_duration_refuses_zero() -> None:
    with pytest.raises(ValueError, match="more than 0"):
        parse_duration("0d")


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-28", datetime(2026, 11, 28, tzinfo=PARIS)),
    ("2026-11-28T09:30", datetime(2026, 11, 28, 9, 30, tzinfo=PARIS)),
    ("2026-11-28 09:30:15", datetime(2026, 11, 28, 9, 30, 15, tzinfo=PARIS)),
    ("2026-11-28T09:30Z", datetime(2026, 11, 28, 9, 30, tzinfo=UTC)),
    ("2026-11-28T09:30+05:00", datetime(2026, 11, 28, 4, 30, tzinfo=UTC)),
])
def test_parse_time_reads_iso_dates_and_times_local_unless_offset(
    text: str, expected: datetime,
) -> None:
    assert parse_time(text, PARIS) == expected


@pytest.mark.parametrize("text", ["yesterday", "28/11/2026", "2026-13-01", "7d"])
def test_parse_time_refuses_anything_else_naming_the_forms(text: str) -> None:
    with pytest.raises(ValueError, match="is not a time: use YYYY-MM-DD"):
        parse_time(text, PARIS)


@pytest.mark.parametrize(("since", "start", "expected"), [
    (None, None, None),
    ("7d", None, NOW - timedelta(days=7)),
    (None, "2026-11-01", datetime(2026, 11, 1, tzinfo=PARIS)),
])
def test_the_window_starts_at_since_or_from_or_never(
    since: str | None, start: str | None, expected: datetime | None,
) -> None:
    args = argparse.Namespace(since=since, start=start)
    assert start_of(args, NOW, PARIS) == expected


def test_render_lists_finished_requests_and_summarizes_every_profile() -> None:
    served = AuditEntry(NOW, "req-7", "personal", "T2", "kimi", "moonshotai/kimi-k2.6",
                        "chat/completions", 2100,
                        Finish("served", "", 200, 2100, 1_200_000, 4000, 1000))
    refused = AuditEntry(NOW + timedelta(seconds=1), "req-8", "private", "T1", "kimi",
                         None, "chat/completions", 0, Finish("refused", "sovereign_tier", 403))
    in_flight = AuditEntry(NOW + timedelta(seconds=2), "req-9", "personal", "T2", "groq",
                           "g", "chat/completions", 300)
    text = render([served, refused, in_flight], {"private": "T1", "personal": "T2",
                                                 "cloudy": "T3"},
                  NOW - timedelta(days=7), PARIS)
    lines = text.splitlines()
    assert lines[0] == "requests handled by mushishi-egress since 2026-11-21 13:00:00"
    assert lines[1].split() == ["TIME", "PROFILE", "TIER", "BACKEND", "MODEL", "ENDPOINT",
                                "OUTCOME", "OUT", "IN", "TOKENS", "REQUEST"]
    assert lines[2].split() == ["2026-11-28", "13:00:00", "personal", "T2", "kimi",
                                "moonshotai/kimi-k2.6", "chat/completions", "served", "2.1",
                                "kB", "1.2", "MB", "5,000", "req-7"]
    assert lines[3].split() == ["2026-11-28", "13:00:01", "private", "T1", "kimi", "-",
                                "chat/completions", "refused", "(sovereign_tier)", "0", "B",
                                "0", "B", "0", "req-8"]
    assert "req-9" not in text  # in flight: only in the summary
    assert lines[4:] == [
        "", "what left the box, per profile:",
        "  private: 0 requests left the box (1 refused)",
        "  personal: 2 requests, 2.4 kB out, 1.2 MB in, 5,000 tokens (1 in flight)",
        "  cloudy: 0 requests left the box"]
