"""Run the budget ledger on a real filesystem that fills up: a 2 MiB tmpfs mounted in a mount
namespace of this process's own (`unshare -m`, as root). Used by test_ledger_full_disk.py:

    unshare -m python -m tests.unit.egress.full_disk SCENARIO DIR

prints one JSON object with what the scenario saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from mushishi.services.egress.core import Price, Usage
from mushishi.services.egress.ledger import LEDGER_FILE, Ledger, LedgerError

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
PRICES = {"kimi": Price(1.0, 2.0)}
FILLER = "filler"


def fill(directory: Path) -> None:
    """Write zeros until the filesystem is full (ENOSPC)."""
    with open(directory / FILLER, "wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 65536)
            out.flush()


def on_disk(directory: Path) -> dict[str, object]:
    with sqlite3.connect(f"{(directory / LEDGER_FILE).as_uri()}?mode=ro", uri=True) as db:
        usage = db.execute("SELECT requests, prompt_tokens, completion_tokens FROM usage"
                           ).fetchall()
        reservations = db.execute("SELECT count(*) FROM reservations").fetchone()[0]
    return {"usage": [list(row) for row in usage], "reservations": reservations}


async def settle(directory: Path) -> dict[str, object]:
    """Reserve, fill the disk, settle (the commit fails), free the disk, wait."""
    ledger = Ledger(directory, PRICES, lambda: NOW)
    ledger.open()
    reservation = await ledger.reserve("kimi", "req-1", 10)
    fill(directory)
    _, write = ledger.settle(reservation, Usage(11, 7))
    try:
        await write
        first = "written"
    except LedgerError as error:
        first = str(error)
    full = on_disk(directory)
    (directory / FILLER).unlink()
    for _ in range(60):  # up to 3 s for the kept settle to land
        if on_disk(directory)["reservations"] == 0:
            break
        await asyncio.sleep(0.05)
    later = on_disk(directory)
    await ledger.close()
    return {"first": first, "full": full, "later": later}


def crash_with_one_in_flight(directory: Path) -> None:
    """A child process reserves a request and dies without settling it."""
    subprocess.run([sys.executable, "-m", "tests.unit.egress.full_disk", "reserve-and-die",
                    str(directory)], check=False)


async def reserve_and_die(directory: Path) -> dict[str, object]:
    ledger = Ledger(directory, PRICES, lambda: NOW)
    ledger.open()
    await ledger.reserve("kimi", "req-crash", 10)
    os._exit(0)


async def start(directory: Path) -> dict[str, object]:
    """Open a ledger (with a crashed run's reservation to settle) on a full disk."""
    crash_with_one_in_flight(directory)
    fill(directory)
    ledger = Ledger(directory, PRICES, lambda: NOW)
    try:
        ledger.open()
        opened = "opened"
    except LedgerError as error:
        opened = f"LedgerError: {error}"
    result: dict[str, object] = {"opened": opened}
    if opened == "opened":
        result["writable"] = ledger.writable
        try:
            await ledger.reserve("kimi", "req-2", 10)
            result["reserve"] = "reserved"
        except LedgerError as error:
            result["reserve"] = str(error)
        result["unavailable"] = ledger.unavailable
        (directory / FILLER).unlink()
        ledger.retry_open()
        result["writable_later"] = ledger.writable
        result["totals"] = ledger.totals("kimi").requests
        await ledger.reserve("kimi", "req-3", 10)
        result["later"] = on_disk(directory)
        await ledger.close()
    return result


async def egress_start(directory: Path) -> dict[str, object]:
    """The egress daemon's start on a full disk: it starts, refuses, then recovers."""
    from mushishi.services.egress.app import LEDGER_RETRY_S, Egress
    from tests.unit.egress.test_ledger import settings_for
    crash_with_one_in_flight(directory)
    from mushishi.shared.config import load_config
    settings_for(directory)  # mushishi.toml next to the mount point, not on it
    config = directory.parent / "mushishi.toml"
    config.write_text(config.read_text() + f'allowed_peers = ["{os.getuid()}"]\n')
    settings = load_config(config).settings
    fill(directory)
    egress = Egress(settings, credential_reader=lambda name: "sk-stand-in")
    await egress.start()
    result: dict[str, object] = {"started": True, "status": egress.status_line(),
                                 "ready": await egress.ledger_ready()}
    (directory / FILLER).unlink()
    await asyncio.sleep(LEDGER_RETRY_S + 0.1)
    result["ready_later"] = await egress.ledger_ready()
    await egress.close()
    result["later"] = on_disk(directory)
    return result


SCENARIOS = {"egress-start": egress_start, "settle": settle, "start": start,
             "reserve-and-die": reserve_and_die}


def main() -> None:
    scenario, directory = sys.argv[1], Path(sys.argv[2])
    if scenario != "reserve-and-die":
        directory.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(directory)],
                       check=True)
    print(json.dumps(asyncio.run(SCENARIOS[scenario](directory))))


if __name__ == "__main__":
    main()
