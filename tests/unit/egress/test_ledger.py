"""The budget ledger on a real SQLite file: exactly-once counting, reconcile, read-only view."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mushishi.services.egress.core import Price, Usage
from mushishi.services.egress.ledger import (
    LEDGER_FILE,
    Ledger,
    LedgerError,
    read_budgets,
)
from mushishi.shared.config import MushishiSettings, load_config

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
PRICES = {"kimi": Price(1.0, 2.0), "groq": None}


def settings_for(state_dir: Path) -> MushishiSettings:
    path = state_dir.parent / "mushishi.toml"
    path.write_text(f"""
[backends.cpu]
url = "http://127.0.0.1:8001/v1"
model = "cpu"

[backends.kimi]
url = "https://integrate.api.nvidia.com/v1"
model = "k"
budget = {{ requests_per_day = 100, tokens_per_day = 5000, cost_per_day = 1.0 }}
price = {{ prompt_per_million = 1.0, completion_per_million = 2.0 }}

[backends.groq]
url = "https://api.groq.com/openai/v1"
model = "g"

[egress]
state_dir = "{state_dir}"
""")
    return load_config(path).settings


def rows(state_dir: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(state_dir / LEDGER_FILE) as connection:
        return connection.execute(sql).fetchall()


async def test_settle_counts_a_request_once_and_release_counts_nothing(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, PRICES, lambda: NOW)
    assert ledger.open() == []
    kept = await ledger.reserve("kimi", "r1", 40)
    dropped = await ledger.reserve("kimi", "r2", 40)
    assert ledger.in_flight("kimi").requests == 2
    cost, write = ledger.settle(kept, Usage(100, 50))
    await write
    assert cost == pytest.approx((100 * 1.0 + 50 * 2.0) / 1e6)
    again, write = ledger.settle(kept, Usage(100, 50))
    await write
    assert again == 0.0
    await ledger.release(dropped)
    totals = ledger.totals("kimi")
    assert (totals.requests, totals.prompt_tokens, totals.completion_tokens) == (1, 100, 50)
    assert ledger.in_flight("kimi").requests == 0
    await ledger.close()
    assert rows(tmp_path, "SELECT requests, prompt_tokens, completion_tokens FROM usage") == [
        (1, 100, 50)]
    assert rows(tmp_path, "SELECT count(*) FROM reservations") == [(0,)]
    assert rows(tmp_path, "PRAGMA journal_mode") == [("wal",)]


async def test_reopening_restores_the_day_and_cooldowns(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, PRICES, lambda: NOW)
    ledger.open()
    for index in range(3):
        reservation = await ledger.reserve("groq", f"r{index}", 10)
        await ledger.settle(reservation, Usage(7, 3))[1]
    ledger.set_cooldown("groq", NOW + timedelta(minutes=5), "429; Retry-After 300s")
    await ledger.close()
    again = Ledger(tmp_path, PRICES, lambda: NOW)
    again.open()
    assert again.totals("groq").requests == 3 and again.totals("groq").tokens == 30
    assert again.cooldown("groq") == (NOW + timedelta(minutes=5), "429; Retry-After 300s")
    again.clear_cooldown("groq")
    await again.close()
    later = Ledger(tmp_path, PRICES, lambda: NOW + timedelta(days=1))
    later.open()
    assert later.totals("groq").requests == 0  # a new UTC day
    assert later.cooldown("groq") is None
    await later.close()


async def test_reservations_left_by_a_dead_process_are_counted_once_as_estimates(
    tmp_path: Path,
) -> None:
    ledger = Ledger(tmp_path, PRICES, lambda: NOW)
    ledger.open()
    streaming = await ledger.reserve("kimi", "cut-stream", 40)
    ledger.checkpoint(streaming, 17)
    await ledger.reserve("kimi", "never-answered", 25)
    done = await ledger.reserve("kimi", "done", 40)
    await ledger.settle(done, Usage(30, 10))[1]
    await ledger.close()  # as a crash leaves it: two reservations on disk, never settled
    assert len(rows(tmp_path, "SELECT id FROM reservations")) == 2
    after = Ledger(tmp_path, PRICES, lambda: NOW)
    reconciled = after.open()
    assert sorted((r.request_id, r.usage) for r in reconciled) == [
        ("cut-stream", Usage(40, 17, estimated=True)),
        ("never-answered", Usage(25, 0, estimated=True))]
    totals = after.totals("kimi")
    assert (totals.requests, totals.prompt_tokens, totals.completion_tokens,
            totals.estimated) == (3, 95, 27, 2)
    await after.close()
    third = Ledger(tmp_path, PRICES, lambda: NOW)
    assert third.open() == []  # settled once: never again
    assert third.totals("kimi").requests == 3
    await third.close()


async def test_only_one_process_may_write_the_ledger(tmp_path: Path) -> None:
    first = Ledger(tmp_path, PRICES, lambda: NOW)
    first.open()
    with pytest.raises(LedgerError, match="another mushishi-egress is using"):
        Ledger(tmp_path, PRICES, lambda: NOW).open()
    await first.close()
    second = Ledger(tmp_path, PRICES, lambda: NOW)
    second.open()
    await second.close()


async def test_a_ledger_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, PRICES, lambda: NOW)
    ledger.open()
    await ledger.close()
    with sqlite3.connect(tmp_path / LEDGER_FILE) as connection:
        connection.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    with pytest.raises(LedgerError, match="newer than this mushishi-egress"):
        Ledger(tmp_path, PRICES, lambda: NOW).open()


async def test_concurrent_requests_are_all_counted_exactly(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, PRICES, lambda: NOW)
    ledger.open()

    async def one(index: int) -> None:
        reservation = await ledger.reserve("kimi", f"r{index}", 5)
        await asyncio.sleep(0)
        await ledger.settle(reservation, Usage(index, 1))[1]

    await asyncio.gather(*(one(i) for i in range(300)))
    await ledger.close()
    assert rows(tmp_path, "SELECT requests, prompt_tokens, completion_tokens FROM usage") == [
        (300, sum(range(300)), 300)]


async def test_read_budgets_reads_the_ledger_while_it_is_open_and_after(
    tmp_path: Path,
) -> None:
    state = tmp_path / "egress"
    settings = settings_for(state)
    with pytest.raises(FileNotFoundError, match="no budget ledger"):
        read_budgets(settings, NOW)
    assert not state.exists()  # reading never creates it
    ledger = Ledger(state, PRICES, lambda: NOW)
    ledger.open()
    settled = await ledger.reserve("kimi", "a", 10)
    await ledger.settle(settled, Usage(1000, 500))[1]
    await ledger.reserve("kimi", "in-flight", 10)
    ledger.set_cooldown("groq", NOW + timedelta(seconds=90), "3 consecutive failures")
    await asyncio.sleep(0.05)  # the cooldown write is queued without waiting
    await ledger.settle(await ledger.reserve("groq", "b", 3), Usage(3, 0))[1]
    running = read_budgets(settings, NOW)
    assert set(running) == {"kimi", "groq"}  # the cloud backends only
    assert running["kimi"] == {
        "day": "2026-11-28", "requests_used": 2, "requests_limit": 100,
        "requests_in_flight": 1, "tokens_used": 1500, "tokens_limit": 5000,
        "cost_used": pytest.approx(0.002), "cost_limit": 1.0, "estimated_requests": 0,
        "audio_seconds_used": 0.0, "audio_seconds_limit": None,
        "cooldown_until": None, "cooldown_reason": None}
    assert running["groq"]["requests_limit"] is None and running["groq"]["cost_used"] is None
    assert running["groq"]["cooldown_until"] == "2026-11-28T12:01:30+00:00"
    await ledger.close()
    stopped = read_budgets(settings, NOW)
    assert stopped["kimi"]["requests_used"] == 2  # the reservation is still counted
    assert stopped["groq"]["requests_used"] == 1
    tomorrow = read_budgets(settings, NOW + timedelta(days=1))
    assert tomorrow["kimi"]["requests_used"] == 0 and tomorrow["groq"]["cooldown_until"] is None


async def test_read_budgets_works_for_a_reader_who_cannot_write_the_directory() -> None:
    """A stopped daemon's ledger, read by another user (here: nobody) with read access only:
    SQLite cannot open a WAL file read-only there, so the reader falls back to immutable."""
    base = Path(tempfile.mkdtemp(prefix="mushishi-ledger-", dir="/tmp"))
    try:
        base.chmod(0o755)
        state = base / "egress"
        settings_for(state)  # writes base/mushishi.toml, which the reader loads
        ledger = Ledger(state, PRICES, lambda: NOW)
        ledger.open()
        await ledger.settle(await ledger.reserve("kimi", "a", 10), Usage(20, 5))[1]
        await ledger.close()
        state.chmod(0o755)
        for path in [base / "mushishi.toml", *state.iterdir()]:
            path.chmod(0o644)
        script = ("import json, sys\n"
                  "from datetime import datetime\n"
                  "from mushishi.shared.config import load_config\n"
                  "from mushishi.services.egress.ledger import read_budgets\n"
                  "settings = load_config(sys.argv[1]).settings\n"
                  "now = datetime.fromisoformat(sys.argv[2])\n"
                  "print(json.dumps(read_budgets(settings, now)))\n")
        result = subprocess.run([sys.executable, "-c", script, str(base / "mushishi.toml"),
                                 NOW.isoformat()], user=65534, capture_output=True, text=True,
                                cwd="/", check=False)
        assert result.returncode == 0, result.stderr
        seen = json.loads(result.stdout)
        assert (seen["kimi"]["requests_used"], seen["kimi"]["tokens_used"]) == (1, 25)
        assert sorted(p.name for p in state.iterdir()) == ["ledger.lock", "ledger.sqlite3"]
    finally:
        shutil.rmtree(base)
