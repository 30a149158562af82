"""What a source said, one type for `mushishi status` and the watchdog alike.

A `Reading` is `ok` with its data, `missing` (nothing to read here, or not yet: not a
fault in itself), or failed with a reason, in one of two kinds that the status screen
tells apart: `down` (a daemon that should answer did not: stopped, hung, unreachable) and
`error` (the source exists but cannot be read: permissions, a damaged file, an answer
that is not what it should be). Each consumer decides what a kind means for it: the
watchdog reports a gpud that is not on the bus as a source it could not check, `mushishi
status` as a daemon that is down.

The file readers that both of them use live here too: a JSON result file and the tail of
`mushishi bench`'s CSV.
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from mushishi.shared.files import JsonFileError, load_json_object

T = TypeVar("T")

ReadingStatus = Literal["ok", "missing", "down", "error"]

# The newest rows of the bench CSV are at its end; older rows are history.
BENCH_TAIL_BYTES = 256 * 1024
BENCH_COLUMNS = ("time", "target", "regression")


@dataclass(frozen=True, slots=True)
class Reading(Generic[T]):
    """What one source said, and how long it took to say it."""

    status: ReadingStatus
    data: T | None = None
    detail: str = ""
    elapsed_s: float = 0.0

    @property
    def failed(self) -> bool:
        """Down or an error: the source should have answered and did not."""
        return self.status in ("down", "error")

    def value(self) -> T:
        """The data of an ok reading (ValueError for any other)."""
        if self.status != "ok":
            raise ValueError(f"a {self.status} reading has no data: {self.detail}")
        return self.data  # type: ignore[return-value]


def ok(data: T, detail: str = "", elapsed_s: float = 0.0) -> Reading[T]:
    """A source that answered."""
    return Reading("ok", data, detail, elapsed_s)


def missing(detail: str, elapsed_s: float = 0.0) -> Reading[Any]:
    """Nothing to read (yet), not a fault."""
    return Reading("missing", None, detail, elapsed_s)


def down(detail: str, elapsed_s: float = 0.0) -> Reading[Any]:
    """A daemon that should have answered and did not."""
    return Reading("down", None, detail, elapsed_s)


def error(detail: str, elapsed_s: float = 0.0) -> Reading[Any]:
    """A source that exists but cannot be read."""
    return Reading("error", None, detail, elapsed_s)


async def within(limit_s: float, reader: Awaitable[Reading[T]], hung: str) -> Reading[T]:
    """The reading with its elapsed time; `down` naming `hung` (what to check) when the
    whole read takes longer than `limit_s`, and `error` for a reader's own bug, so that one
    source never hides the others."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(limit_s):
            reading = await reader
    except TimeoutError:
        reading = down(f"did not answer within {limit_s:g} s ({hung})")
    except Exception as caught:  # an adapter bug must not hide the other sources
        reading = error(f"{type(caught).__name__}: {caught}")
    elapsed = time.perf_counter() - started
    return Reading(reading.status, reading.data, reading.detail, elapsed)


def read_json_object(path: Path, absent: str) -> Reading[dict[str, Any]]:
    """A JSON object in a file (a result file); `missing(absent)` when there is none."""
    try:
        data = load_json_object(path)
    except JsonFileError as caught:
        if isinstance(caught.cause, PermissionError):
            return error(f"permission denied on {path} (run as root)")
        return error(str(caught))
    return missing(absent) if data is None else ok(data)


def read_bench_rows(path: Path, tail_bytes: int = BENCH_TAIL_BYTES
                    ) -> Reading[list[dict[str, str]]]:
    """The newest rows of the `mushishi bench` CSV (its last `tail_bytes`, header kept)."""
    try:
        with path.open("rb") as handle:
            header = handle.readline()
            size = handle.seek(0, io.SEEK_END)
            start = max(len(header), size - tail_bytes)
            handle.seek(start)
            tail = handle.read()
    except FileNotFoundError:
        return missing(f"no bench results yet at {path} (run `mushishi bench`)")
    except PermissionError:
        return error(f"permission denied on {path} (run as root)")
    except OSError as caught:
        return error(f"cannot read {path}: {caught}")
    if start > len(header):
        tail = tail.split(b"\n", 1)[1] if b"\n" in tail else b""  # drop a partial line
    try:
        rows = list(csv.DictReader(io.StringIO((header + tail).decode("utf-8"))))
    except (csv.Error, UnicodeDecodeError) as caught:
        return error(f"cannot parse {path}: {caught}")
    if not rows:
        return missing(f"{path} has no results yet")
    if any(column not in rows[0] for column in BENCH_COLUMNS):
        return error(f"{path} lacks the {'/'.join(BENCH_COLUMNS)} columns of `mushishi bench`")
    return ok(rows)
