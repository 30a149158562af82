"""The audit of what left the box: its pure parts (outcomes, names, retention, summary) and
its rows in the ledger's real SQLite file (same transactions as the budgets, a crash, prune,
the read-only reader)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mushishi.services.egress import audit
from mushishi.services.egress.audit import (
    AuditEntry,
    Finish,
    ProfileSummary,
    human_bytes,
    plain,
    retention_cutoff,
    sent_outcome,
    summarize,
    summary_line,
)
from mushishi.services.egress.core import Price, Usage
from mushishi.services.egress.ledger import (
    LEDGER_FILE,
    PRUNE_BATCH,
    AuditUnavailable,
    Ledger,
    read_audit,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
PRICES = {"kimi": Price(1.0, 2.0)}


def entry(profile: str = "personal", *, time: datetime = NOW, finish: Finish | None = None,
          bytes_out: int = 0) -> AuditEntry:
    return AuditEntry(time, "req-1", profile, "T2", "kimi", "k", "chat/completions", bytes_out,
                      finish)


@pytest.mark.parametrize(("kind", "expected"), [
    ("success", ("served", "")),
    ("client_error", ("failed", "provider_rejected")),
    ("provider_error", ("failed", "provider_error")),
    ("rate_limited", ("failed", "rate_limited")),
    ("timeout", ("failed", "timeout")),
    ("unreachable", ("failed", "unreachable")),
    ("broken_stream", ("failed", "broken_stream")),
    ("cancelled", ("failed", "cancelled")),
])
def test_sent_outcome_maps_the_relays_end_to_served_or_failed_with_a_code(
    kind: str, expected: tuple[str, str],
) -> None:
    assert sent_outcome(kind) == expected


@pytest.mark.parametrize(("header", "kept"), [
    ("personal", "personal"),
    ("T1-strict", "T1-strict"),
    ("kimi.v2:beta_1", "kimi.v2:beta_1"),
    (None, "?"),
    ("", "?"),
    ("tell me about the merger", "?"),  # text is never kept, whatever a header carries
    ("x" * 65, "?"),
    ("naïve", "?"),
])
def test_plain_keeps_only_short_plain_names_from_headers(header: str | None, kept: str) -> None:
    assert plain(header) == kept


@pytest.mark.parametrize(("days", "cutoff"), [
    (90, datetime(2026, 8, 30, 12, 0, tzinfo=UTC)),
    (1, datetime(2026, 11, 27, 12, 0, tzinfo=UTC)),
    (365, datetime(2025, 11, 28, 12, 0, tzinfo=UTC)),
])
def test_retention_cutoff_is_now_minus_the_days(days: int, cutoff: datetime) -> None:
    assert retention_cutoff(NOW, days) == cutoff


@pytest.mark.parametrize(("size", "shown"), [
    (0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (3400, "3.4 kB"), (34_000, "34 kB"),
    (999_499, "999 kB"), (1_200_000, "1.2 MB"), (56_000_000, "56 MB"), (7_300_000_000, "7.3 GB"),
])
def test_human_bytes_uses_powers_of_1000(size: int, shown: str) -> None:
    assert human_bytes(size) == shown


SERVED = Finish("served", "", 200, 2000, 100_000, 400, 100)


@pytest.mark.parametrize(("entries", "profiles", "lines"), [
    ([], {"private": "T1", "personal": "T2"},
     ["private: 0 requests left the box", "personal: 0 requests left the box"]),
    ([entry("private", finish=Finish("refused", "sovereign_tier", 403))],
     {"private": "T1"},
     ["private: 0 requests left the box (1 refused)"]),
    ([entry(finish=SERVED, bytes_out=2000)] * 12 + [
        entry(finish=Finish("failed", "provider_error", 500, 2000, 300), bytes_out=2000),
        entry(finish=Finish("failed", "unreachable", 502, 0, 0), bytes_out=2000),
        entry(finish=Finish("refused", "budget_exhausted", 429))],
     {"personal": "T2"},
     ["personal: 13 requests, 26 kB out, 1.2 MB in, 6,000 tokens (2 failed, 1 refused)"]),
    ([entry(bytes_out=700)], {"personal": "T2"},
     ["personal: 1 request, 700 B out, 0 B in, 0 tokens (1 in flight)"]),
    ([entry("ghost", finish=Finish("refused", "unknown_profile", 403))], {"private": "T1"},
     ["private: 0 requests left the box", "ghost: 0 requests left the box (1 refused)"]),
])
def test_summary_per_profile(entries: list[AuditEntry], profiles: dict[str, str],
                             lines: list[str]) -> None:
    assert [summary_line(s) for s in summarize(entries, profiles)] == lines


def test_summarize_counts_what_left_by_bytes_sent() -> None:
    entries = [entry(finish=SERVED, bytes_out=2000),
               entry(finish=Finish("failed", "unreachable", 502, 0, 0), bytes_out=2000)]
    assert summarize(entries, {}) == [ProfileSummary(
        "personal", "T2", left=1, bytes_out=2000, bytes_in=100_000, tokens=500, served=1,
        failed=1)]


def test_as_json_has_the_contracts_fields() -> None:
    row = entry(finish=Finish("served", "", 200, 10, 20, 3, 4, True), bytes_out=10)
    assert row.as_json() == {
        "time": "2026-11-28T12:00:00+00:00", "request_id": "req-1", "profile": "personal",
        "tier": "T2", "backend": "kimi", "model": "k", "endpoint": "chat/completions",
        "bytes_out": 10, "bytes_in": 20, "tokens": 7, "prompt_tokens": 3,
        "completion_tokens": 4, "tokens_estimated": True, "outcome": "served", "reason": "",
        "status": 200}


# -- rows in the ledger's file ---------------------------------------------------------

async def test_the_audit_row_rides_on_the_reservation_and_settle_commits(
    tmp_path: Path,
) -> None:
    ledger = Ledger(tmp_path, PRICES, lambda: NOW)
    ledger.open()
    reservation = await ledger.reserve("kimi", "req-1", 5, entry(bytes_out=321))
    (in_flight,) = read_audit(tmp_path)
    assert (in_flight.finish, in_flight.bytes_sent) == (None, 321)
    finish = Finish("served", "", 200, 321, 654, 5, 7)
    await ledger.settle(reservation, Usage(5, 7), finish)[1]
    # One commit for the reservation (and its row), one for the settlement (and its row):
    # the audit costs no fsync of its own.
    assert ledger.commits == 2
    await ledger.close()
    assert [(e.id, e.finish) for e in read_audit(tmp_path)] == [(in_flight.id, finish)]


async def test_a_release_completes_the_row_and_a_refusal_is_one_row(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, PRICES, lambda: NOW)
    ledger.open()
    reservation = await ledger.reserve("kimi", "req-1", 5, entry("personal", bytes_out=10))
    failed = Finish("failed", "provider_error", 500, 10, 40)
    await ledger.release(reservation, failed)
    refused = Finish("refused", "sovereign_tier", 403)
    await ledger.record(entry("private", finish=refused))
    assert ledger.commits == 3
    await ledger.close()
    assert [(e.profile, e.finish) for e in read_audit(tmp_path)] == [
        ("personal", failed), ("private", refused)]
    assert ledger.totals("kimi").requests == 0  # the release counted nothing


async def test_a_request_in_flight_when_the_egress_died_is_failed_interrupted(
    tmp_path: Path,
) -> None:
    dead = Ledger(tmp_path, PRICES, lambda: NOW)
    dead.open()
    reservation = await dead.reserve("kimi", "req-1", 9, entry(bytes_out=50))
    dead.checkpoint(reservation, 4)
    await dead.close()  # as a crash leaves it: the reservation on disk, never settled
    after = Ledger(tmp_path, PRICES, lambda: NOW)
    after.open()
    await after.close()
    (row,) = read_audit(tmp_path)
    assert row.finish == Finish("failed", "interrupted", 0, 50, 0, 9, 4, True)


async def test_prune_deletes_old_rows_in_batches_and_keeps_the_rest(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, PRICES, lambda: NOW)
    ledger.open()
    old = NOW - timedelta(days=100)
    with sqlite3.connect(tmp_path / LEDGER_FILE) as connection:
        audit.insert(connection, entry("recent", time=NOW - timedelta(days=89), finish=SERVED))
        for index in range(PRUNE_BATCH + 5):  # older rows written later: pruned by time
            audit.insert(connection, entry(time=old + timedelta(seconds=index), finish=SERVED))
    cutoff = retention_cutoff(NOW, 90)
    assert await ledger.prune_audit(cutoff) == PRUNE_BATCH  # full: there may be more
    assert await ledger.prune_audit(cutoff) == 5
    assert await ledger.prune_audit(cutoff) == 0
    await ledger.close()
    assert [e.profile for e in read_audit(tmp_path)] == ["recent"]


async def test_read_audit_filters_by_time_and_profile(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, PRICES, lambda: NOW)
    ledger.open()
    for days, profile in ((3, "personal"), (2, "cloudy"), (1, "personal")):
        await ledger.record(entry(profile, time=NOW - timedelta(days=days), finish=SERVED))
    await ledger.close()
    since = NOW - timedelta(days=2, hours=1)
    assert [e.profile for e in read_audit(tmp_path, since=since)] == ["cloudy", "personal"]
    assert [e.time for e in read_audit(tmp_path, profile="personal")] == [
        NOW - timedelta(days=3), NOW - timedelta(days=1)]
    assert read_audit(tmp_path, since=since, profile="private") == []


async def test_read_audit_names_the_state_dir_when_there_is_no_ledger(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"egress.state_dir = {tmp_path}/nowhere"):
        read_audit(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


async def test_a_ledger_from_before_the_audit_is_upgraded_at_start(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / LEDGER_FILE) as connection:
        connection.executescript(SCHEMA_1)  # as the first release wrote it, one in flight
        connection.execute("INSERT INTO meta VALUES ('schema', '1')")
        connection.execute("INSERT INTO reservations VALUES ('r', '2026-11-28', 'kimi', 'old', "
                           "'2026-11-28T11:00:00+00:00', 'req-0', 7, 0)")
    with pytest.raises(AuditUnavailable, match="restart mushishi-egress once"):
        read_audit(tmp_path)
    ledger = Ledger(tmp_path, PRICES, lambda: NOW)
    assert [r.request_id for r in ledger.open()] == ["req-0"]  # settled, with no audit row
    await ledger.settle(await ledger.reserve("kimi", "req-1", 5, entry(bytes_out=9)),
                        Usage(5, 1), SERVED)[1]
    await ledger.close()
    assert [(e.request_id, e.finish) for e in read_audit(tmp_path)] == [("req-1", SERVED)]
    with sqlite3.connect(tmp_path / LEDGER_FILE) as connection:
        assert connection.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() \
            == ("3",)
        assert connection.execute("SELECT requests, audio_seconds FROM usage WHERE backend = "
                                  "'kimi' AND day = '2026-11-28'").fetchone() == (2, 0.0)


SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE usage (
    day TEXT NOT NULL, backend TEXT NOT NULL, requests INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL DEFAULT 0,
    cost REAL NOT NULL DEFAULT 0, estimated INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, backend));
CREATE TABLE reservations (
    id TEXT PRIMARY KEY, day TEXT NOT NULL, backend TEXT NOT NULL, owner TEXT NOT NULL,
    started TEXT NOT NULL, request_id TEXT NOT NULL, prompt_estimate INTEGER NOT NULL,
    completion_estimate INTEGER NOT NULL DEFAULT 0);
CREATE TABLE cooldowns (backend TEXT PRIMARY KEY, until TEXT NOT NULL, reason TEXT NOT NULL);
"""
