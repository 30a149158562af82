"""The results CSV (append-only, one writer at a time) and the node_exporter textfile."""

from __future__ import annotations

import csv
import fcntl
import io
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import IO

from prometheus_client import Gauge

from mushishi.services.bench.core import COLUMNS
from mushishi.shared.metrics import new_registry, write_textfile

TEXTFILE = "mushishi_bench"


class ResultsError(Exception):
    """The CSV cannot be used; the message names the file and the fix."""


@contextmanager
def locked(path: Path) -> Iterator[IO[str]]:
    """The CSV opened for reading and appending, under an exclusive lock (created with its
    header when absent)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+", newline="", encoding="utf-8")  # noqa: SIM115
    except PermissionError as error:
        raise ResultsError(f"cannot open {path}: {error.strerror} (watchdog.bench_results): "
                           "it belongs to user mushishi; run `systemctl start mushishi-bench` "
                           "or `sudo -u mushishi mushishi bench`") from None
    except OSError as error:
        raise ResultsError(f"cannot open {path}: {error.strerror or error} (watchdog.bench_results)"
                           ) from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        first = handle.readline()
        if not first:
            handle.write(",".join(COLUMNS) + "\n")
            handle.flush()
        elif next(csv.reader([first])) != list(COLUMNS):
            raise ResultsError(
                f"{path} has columns {first.strip()!r}, not those of `mushishi bench` "
                f"({','.join(COLUMNS)}): move it aside, or point watchdog.bench_results "
                "elsewhere")
        yield handle


def read_rows(handle: IO[str]) -> list[dict[str, str]]:
    """Every row, oldest first."""
    handle.seek(0)
    return list(csv.DictReader(handle))


def append(handle: IO[str], rows: Sequence[Mapping[str, str]]) -> None:
    """Append rows and fsync: a crash never leaves half a row."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    for row in rows:
        writer.writerow({column: row.get(column, "") for column in COLUMNS})
    handle.seek(0, io.SEEK_END)
    handle.write(buffer.getvalue())
    handle.flush()
    os.fsync(handle.fileno())


def read_history(path: Path) -> list[dict[str, str]]:
    """Rows of an existing CSV (none when it does not exist)."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except FileNotFoundError:
        return []


def write_metrics(rows: Sequence[Mapping[str, str]], directory: str, finished: datetime
                  ) -> Path:
    """mushishi_bench.prom: the newest result of every target and backend."""
    registry = new_registry("bench")
    last_run = Gauge("mushishi_bench_last_run_timestamp_seconds",
                     "End of the last `mushishi bench` run.", registry=registry)
    speed = Gauge("mushishi_bench_tokens_per_second",
                  "Completion tokens per second of the newest run, by target and backend.",
                  ["target", "backend"], registry=registry)
    regression = Gauge("mushishi_bench_regression",
                       "1 when the newest run of a target was flagged as a regression.",
                       ["target", "backend"], registry=registry)
    measured = Gauge("mushishi_bench_measured_timestamp_seconds",
                     "When the newest run of a target and backend finished.",
                     ["target", "backend"], registry=registry)
    newest: dict[tuple[str, str], Mapping[str, str]] = {}
    for row in rows:
        newest[(row.get("target", ""), row.get("backend", ""))] = row
    for (target, backend), row in sorted(newest.items()):
        try:
            speed.labels(target, backend).set(float(row["tokens_per_s"]))
        except (KeyError, ValueError):
            continue
        regression.labels(target, backend).set(1 if row.get("regression") == "true" else 0)
        with suppress(KeyError, ValueError):
            measured.labels(target, backend).set(
                datetime.fromisoformat(row["time"]).timestamp())
    last_run.set(finished.timestamp())
    return write_textfile(registry, directory, TEXTFILE)
