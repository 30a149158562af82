"""The budget ledger: what each cloud provider used per UTC day, in SQLite (WAL) on disk.

What "counted" means (docs/egress.md):

* `reserve` writes a reservation row and commits it **before** the request is sent, so a
  request that may reach the provider is never lost, whatever happens next.
* `settle` deletes the reservation and adds the request to the day's totals in one
  transaction, with the provider's `usage` (or an estimate when it gave none). Once the
  router has the end of an answer, it is counted.
* `release` deletes the reservation without counting: the provider refused or never
  answered (connection error, timeout before the first byte, 4xx, 5xx, 429).
* After a crash, reservations left by the dead process are settled at the next start
  (`reconcile`) as one request each, with their estimated prompt tokens and the completion
  tokens seen so far (checkpointed about once a second while a stream runs), marked
  estimated. A reservation is settled exactly once, so nothing is counted twice.

The audit of what left the box (audit.py) lives in the same file: a request's row is written
with its reservation, completed in the transaction that settles or releases it, or written
whole for a request refused before any reservation; a crash leaves it in flight until
`reconcile` marks it failed (`interrupted`). Old rows are pruned in small batches.

Writes go to one writer thread that commits whatever is queued in one transaction (group
commit, `synchronous=FULL`), so the event loop never blocks on the disk. The in-memory
totals are exact for the one process that writes; `read_budgets` reads the file read-only
for `mushishi status`, whether the daemon runs or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import queue
import sqlite3
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mushishi.services.egress import audit
from mushishi.services.egress.audit import AuditEntry, Finish
from mushishi.services.egress.core import (
    CloudBackend,
    DayTotals,
    InFlight,
    Price,
    Usage,
    compile_policy,
    cost_of,
    parse_iso,
    utc_day,
)
from mushishi.shared.locks import try_exclusive

if TYPE_CHECKING:
    from mushishi.shared.config.settings import MushishiSettings

log = logging.getLogger("mushishi.egress.ledger")

LEDGER_FILE = "ledger.sqlite3"
LOCK_FILE = "ledger.lock"
SCHEMA_VERSION = 3  # 2: the audit table; 3: usage.audio_seconds
BATCH_MAX = 512
PRUNE_BATCH = 1000  # audit rows deleted per transaction: a prune never holds requests long

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS usage (
    day TEXT NOT NULL,
    backend TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cost REAL NOT NULL DEFAULT 0,
    estimated INTEGER NOT NULL DEFAULT 0,
    audio_seconds REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (day, backend)
);
CREATE TABLE IF NOT EXISTS reservations (
    id TEXT PRIMARY KEY,
    day TEXT NOT NULL,
    backend TEXT NOT NULL,
    owner TEXT NOT NULL,
    started TEXT NOT NULL,
    request_id TEXT NOT NULL,
    prompt_estimate INTEGER NOT NULL,
    completion_estimate INTEGER NOT NULL DEFAULT 0,
    audit_row INTEGER
);
CREATE TABLE IF NOT EXISTS cooldowns (
    backend TEXT PRIMARY KEY,
    until TEXT NOT NULL,
    reason TEXT NOT NULL
);
""" + audit.SCHEMA

_ADD_USAGE = """
INSERT INTO usage (day, backend, requests, prompt_tokens, completion_tokens, cost, estimated,
                   audio_seconds)
VALUES (?, ?, 1, ?, ?, ?, ?, ?)
ON CONFLICT (day, backend) DO UPDATE SET
    requests = requests + 1,
    prompt_tokens = prompt_tokens + excluded.prompt_tokens,
    completion_tokens = completion_tokens + excluded.completion_tokens,
    cost = cost + excluded.cost,
    estimated = estimated + excluded.estimated,
    audio_seconds = audio_seconds + excluded.audio_seconds
"""


class LedgerError(Exception):
    """The ledger cannot be used; the message names the path and what to do."""


@dataclass(frozen=True, slots=True)
class Reservation:
    """One request that may reach a provider, until it is settled or released."""

    id: str
    backend: str
    day: str
    prompt_estimate: int


@dataclass(frozen=True, slots=True)
class Reconciled:
    """Reservations of a dead process, settled from their estimates at start."""

    backend: str
    day: str
    request_id: str
    usage: Usage


Op = Callable[[sqlite3.Connection], Any]
Job = tuple[Op, asyncio.Future[Any] | None, asyncio.AbstractEventLoop | None, bool]

# A kept write (a settle or a release the disk refused) is tried again this often, and with
# every commit in between.
RETRY_S = 1.0


class _Writer(threading.Thread):
    """Runs every write on one connection; whatever is queued commits together. A kept write
    (`keep`: a settle or release) that fails for the disk (full, I/O error, locked) stays
    here and is tried again with the next commit or after RETRY_S, until it lands; its
    future fails at the first try, so no answer waits for the disk."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        super().__init__(name="mushishi-egress-ledger", daemon=True)
        self.connection = connection
        self.path = path
        self.commits = 0  # transactions committed (each one fsync): tests count them
        self.kept: list[Op] = []  # writes the disk refused, in order, tried again
        self.jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()

    def submit(self, op: Op, future: asyncio.Future[Any] | None,
               loop: asyncio.AbstractEventLoop | None, keep: bool = False) -> None:
        self.jobs.put((op, future, loop, keep))

    def run(self) -> None:
        stopping = False
        while not stopping:
            try:
                first = self.jobs.get(timeout=RETRY_S if self.kept else None)
            except queue.Empty:
                self._commit([])  # the kept writes alone
                continue
            if first is None:
                break
            batch = [first]
            while len(batch) < BATCH_MAX:
                try:
                    job = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                batch.append(job)
            self._commit(batch)
        if self.kept:
            self._commit([])
        if self.kept:
            log.error("mushishi-egress stops with %d settle(s) or release(s) the budget ledger "
                      "%s could not write (its disk is full or failing): their requests stay "
                      "in flight on disk and are counted from their estimates at the next "
                      "start", len(self.kept), self.path)
        self.connection.close()

    def _commit(self, batch: list[Job]) -> None:
        kept, self.kept = self.kept, []
        jobs: list[Job] = [(op, None, None, True) for op in kept] + batch
        results: list[tuple[bool, Any]] = []
        connection = self.connection
        try:
            connection.execute("BEGIN IMMEDIATE")
            for op, _, _, _ in jobs:
                connection.execute("SAVEPOINT op")
                try:
                    results.append((True, op(connection)))
                    connection.execute("RELEASE op")
                except sqlite3.Error as error:
                    connection.execute("ROLLBACK TO op")
                    connection.execute("RELEASE op")
                    results.append((False, error))
            connection.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error as error:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            results = [(False, error)] * len(jobs)
        for (op, _, _, keep), (ok, value) in zip(jobs, results, strict=True):
            if not ok and keep and isinstance(value, sqlite3.OperationalError):
                self.kept.append(op)
        failed = [value for ok, value in results[len(kept):] if not ok]
        if failed:
            log.error("the budget ledger %s could not commit (%s); usage of %d request(s) is "
                      "not on disk yet%s", self.path, failed[0], len(failed),
                      f" ({len(self.kept)} settle(s) or release(s) kept, tried again every "
                      f"{RETRY_S:g}s)" if self.kept else "")
        landed = len(kept) - sum(1 for ok, _ in results[:len(kept)] if not ok)
        if kept and landed:
            log.warning("the budget ledger %s wrote %d kept settle(s) or release(s) (%d still "
                        "kept)", self.path, landed, len(self.kept))
        for (_, future, loop, _), (ok, value) in zip(batch, results[len(kept):], strict=True):
            if future is None or loop is None:
                continue
            if ok:
                loop.call_soon_threadsafe(_resolve, future, value)
            else:
                loop.call_soon_threadsafe(_fail, future, LedgerError(
                    f"the budget ledger {self.path} could not write ({value})"))


_TOTALS_QUERY = ("SELECT backend, requests, prompt_tokens, completion_tokens, cost, estimated, "
                 "audio_seconds FROM usage WHERE day = ?")
# A ledger the running egress has not upgraded yet (schema 2) has no audio seconds.
_TOTALS_QUERY_2 = ("SELECT backend, requests, prompt_tokens, completion_tokens, cost, "
                   "estimated, 0 FROM usage WHERE day = ?")


def _has_audio_seconds(connection: sqlite3.Connection) -> bool:
    """Whether the usage table has schema 3's audio_seconds column."""
    return any(column[1] == "audio_seconds"
               for column in connection.execute("PRAGMA table_info(usage)"))


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def ledger_path(state_dir: str | os.PathLike[str]) -> Path:
    """Where the ledger of `egress.state_dir` lives."""
    return Path(state_dir) / LEDGER_FILE


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                 timeout=10.0)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA foreign_keys=ON")
    return connection


class Ledger:
    """The egress's budget ledger; `open()` before use, `close()` (awaited) at the end."""

    def __init__(self, state_dir: str | os.PathLike[str], prices: dict[str, Price | None],
                 clock: Callable[[], datetime] | None = None) -> None:
        self.directory = Path(state_dir)
        self.path = ledger_path(state_dir)
        self.prices = prices
        self.clock = clock or (lambda: datetime.now(UTC))
        self.owner = uuid.uuid4().hex
        self._totals: dict[tuple[str, str], DayTotals] = {}
        self._in_flight: dict[str, dict[str, Reservation]] = {}
        self._cooldowns: dict[str, tuple[datetime, str]] = {}
        self._writer: _Writer | None = None
        self._lock_fd: int | None = None
        self._pending: set[asyncio.Future[Any]] = set()
        # Why the ledger cannot be written (its disk full at start), or None.
        self.unavailable: str | None = None

    # -- lifecycle ----------------------------------------------------------------------
    def open(self) -> list[Reconciled]:
        """Create or open the ledger, take the single-writer lock, load today's totals and
        the cooldowns, and settle reservations a crashed process left behind. A disk that is
        full or failing does not stop the start: the ledger is then `unavailable` (every
        write, so every cloud request, refused with the reason) until `retry_open` works."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.directory / LOCK_FILE,
                                    os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as error:
            raise LedgerError(f"cannot use egress.state_dir {self.directory}: "
                              f"{error.strerror}") from None
        if not try_exclusive(self._lock_fd):
            os.close(self._lock_fd)
            self._lock_fd = None
            raise LedgerError(f"another mushishi-egress is using {self.path} (its lock "
                              f"{self.directory / LOCK_FILE} is held)") from None
        try:
            return self._open_file()
        except LedgerError:
            self._unlock()
            raise

    def retry_open(self) -> list[Reconciled]:
        """Try again to open a ledger that was `unavailable` (its disk full); what `open`
        returns, once it works."""
        if self.unavailable is None or self._lock_fd is None:
            return []
        return self._open_file()

    @property
    def writable(self) -> bool:
        """Open, with its writer running (False while `unavailable` or closed)."""
        return self._writer is not None

    def _open_file(self) -> list[Reconciled]:
        connection: sqlite3.Connection | None = None
        try:
            connection = _connect(self.path)
            connection.executescript(_SCHEMA)
            row = connection.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is not None and int(row[0]) > SCHEMA_VERSION:
                raise LedgerError(f"{self.path} has schema {row[0]}, newer than this "
                                  f"mushishi-egress ({SCHEMA_VERSION}): upgrade mushishi")
            columns = {c[1] for c in connection.execute("PRAGMA table_info(reservations)")}
            if "audit_row" not in columns:  # schema 1; the script added the audit table
                connection.execute("ALTER TABLE reservations ADD COLUMN audit_row INTEGER")
            if not _has_audio_seconds(connection):  # schema 2
                connection.execute("ALTER TABLE usage ADD COLUMN audio_seconds REAL NOT NULL "
                                   "DEFAULT 0")
            if row is None or int(row[0]) < SCHEMA_VERSION:
                connection.execute("INSERT INTO meta VALUES ('schema', ?) ON CONFLICT (key) "
                                   "DO UPDATE SET value = excluded.value",
                                   (str(SCHEMA_VERSION),))
            reconciled = self._reconcile(connection)
            self._totals.clear()
            self._load(connection)
        except sqlite3.Error as error:
            if connection is not None:
                with contextlib.suppress(sqlite3.Error):
                    connection.close()
            if not _disk_error(error):
                raise LedgerError(f"cannot open the budget ledger {self.path}: "
                                  f"{error}") from None
            self.unavailable = (f"the budget ledger {self.path} cannot be written ({error}): "
                                "free space on its filesystem (egress.state_dir); cloud "
                                "requests are refused until it can")
            return []
        except LedgerError:
            if connection is not None:
                connection.close()
            raise
        self.unavailable = None
        self._writer = _Writer(connection, self.path)
        self._writer.start()
        return reconciled

    def _reconcile(self, connection: sqlite3.Connection) -> list[Reconciled]:
        rows = connection.execute(
            "SELECT id, day, backend, request_id, prompt_estimate, completion_estimate, "
            "audit_row FROM reservations").fetchall()
        done = []
        connection.execute("BEGIN IMMEDIATE")
        for ident, day, backend, request_id, prompt, completion, audit_row in rows:
            usage = Usage(prompt, completion, estimated=True)
            cost = cost_of(usage, self.prices.get(backend))
            connection.execute("DELETE FROM reservations WHERE id = ?", (ident,))
            connection.execute(_ADD_USAGE, (day, backend, usage.prompt_tokens,
                                            usage.completion_tokens, cost, 1, 0.0))
            if audit_row is not None:
                audit.interrupt_row(connection, audit_row, usage.prompt_tokens,
                                    usage.completion_tokens)
            done.append(Reconciled(backend, day, request_id, usage))
        connection.execute("COMMIT")
        return done

    def _load(self, connection: sqlite3.Connection) -> None:
        today = utc_day(self.clock())
        for backend, requests, prompt, completion, cost, estimated, audio in \
                connection.execute(
                    "SELECT backend, requests, prompt_tokens, completion_tokens, cost, "
                    "estimated, audio_seconds FROM usage WHERE day = ?", (today,)):
            self._totals[(today, backend)] = DayTotals(requests, prompt, completion, cost,
                                                       estimated, audio)
        now = self.clock()
        for backend, until, reason in connection.execute(
                "SELECT backend, until, reason FROM cooldowns"):
            when = parse_iso(until)
            if when > now:
                self._cooldowns[backend] = (when, reason)

    async def close(self) -> None:
        """Wait for every queued write, then close the file and release the lock."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.jobs.put(None)
            await asyncio.to_thread(writer.join)
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def commits(self) -> int:
        """Transactions committed since `open()` (each costs one fsync)."""
        return self._writer.commits if self._writer is not None else 0

    # -- reading (memory: this process is the only writer) ------------------------------
    def totals(self, backend: str, day: str | None = None) -> DayTotals:
        """Settled usage of `backend` on `day` (today by default)."""
        return self._totals.get((day or utc_day(self.clock()), backend), DayTotals())

    def in_flight(self, backend: str) -> InFlight:
        """Reservations of `backend` not settled yet."""
        open_ = self._in_flight.get(backend)
        if not open_:
            return InFlight()
        return InFlight(len(open_), sum(r.prompt_estimate for r in open_.values()))

    def cooldown(self, backend: str) -> tuple[datetime, str] | None:
        """The stored cooldown of `backend` (its end and reason), if any."""
        return self._cooldowns.get(backend)

    # -- writing ------------------------------------------------------------------------
    def _submit(self, op: Op, *, wait: bool, keep: bool = False) -> asyncio.Future[Any]:
        """Queue `op` for the writer; `keep`: should the disk refuse it, it is kept and tried
        again until it lands (settles and releases: what the provider counted, or not)."""
        writer = self._writer
        if writer is None:
            raise LedgerError(self.unavailable or "the budget ledger is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        if not wait:
            future.add_done_callback(_log_failure)
        writer.submit(op, future, loop, keep)
        return future

    @property
    def kept_writes(self) -> int:
        """Settles and releases the disk refused, waiting to be written again."""
        return len(self._writer.kept) if self._writer is not None else 0

    async def reserve(self, backend: str, request_id: str, prompt_estimate: int,
                      entry: AuditEntry | None = None) -> Reservation:
        """Record a request about to be sent (and its audit row, in flight, which the
        reservation points to); returns once it is on disk."""
        now = self.clock()
        reservation = Reservation(uuid.uuid4().hex, backend, utc_day(now), prompt_estimate)
        self._in_flight.setdefault(backend, {})[reservation.id] = reservation
        started = now.astimezone(UTC).isoformat()
        row = dataclasses.replace(entry, finish=None) if entry is not None else None

        def op(connection: sqlite3.Connection) -> None:
            audit_row = audit.insert(connection, row) if row is not None else None
            connection.execute(
                "INSERT INTO reservations (id, day, backend, owner, started, request_id, "
                "prompt_estimate, audit_row) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (reservation.id, reservation.day, backend, self.owner, started, request_id,
                 prompt_estimate, audit_row))
        try:
            await asyncio.shield(self._submit(op, wait=True))
        except BaseException:
            # Not on disk (or the wait was cancelled): the request is not sent; drop it.
            self._in_flight.get(backend, {}).pop(reservation.id, None)
            self._submit(_delete(reservation.id, Finish(audit.FAILED, "cancelled")
                                 if row is not None else None), wait=False, keep=True)
            raise
        return reservation

    def checkpoint(self, reservation: Reservation, completion_estimate: int) -> None:
        """Remember how much of a stream arrived, for a crash before it is settled."""
        def op(connection: sqlite3.Connection) -> None:
            connection.execute("UPDATE reservations SET completion_estimate = ? WHERE id = ?",
                               (completion_estimate, reservation.id))
        self._submit(op, wait=False)

    def release(self, reservation: Reservation, finish: Finish | None = None
                ) -> asyncio.Future[Any]:
        """The provider did not answer: forget the reservation, count nothing; complete its
        audit row with `finish` in the same transaction."""
        if self._in_flight.get(reservation.backend, {}).pop(reservation.id, None) is None:
            return _done()
        return self._submit(_delete(reservation.id, finish), wait=False, keep=True)

    def settle(self, reservation: Reservation, usage: Usage, finish: Finish | None = None
               ) -> tuple[float, asyncio.Future[Any]]:
        """Count the request with its usage (exactly once), and complete its audit row with
        `finish` in the same transaction; returns its cost and the write."""
        if self._in_flight.get(reservation.backend, {}).pop(reservation.id, None) is None:
            return 0.0, _done()
        cost = cost_of(usage, self.prices.get(reservation.backend))
        key = (reservation.day, reservation.backend)
        self._totals[key] = self._totals.get(key, DayTotals()).plus(usage, cost)

        def op(connection: sqlite3.Connection) -> None:
            deleted = _delete_reservation(connection, reservation.id, finish)
            if deleted:
                connection.execute(_ADD_USAGE, (
                    reservation.day, reservation.backend, usage.prompt_tokens,
                    usage.completion_tokens, cost, 1 if usage.estimated else 0,
                    usage.audio_seconds))
        return cost, self._submit(op, wait=False, keep=True)

    def record(self, entry: AuditEntry) -> asyncio.Future[Any]:
        """Write the audit row of a request that never got a reservation (refused)."""
        return self._submit(lambda connection: audit.insert(connection, entry), wait=True)

    def prune_audit(self, before: datetime) -> asyncio.Future[Any]:
        """Delete up to PRUNE_BATCH audit rows older than `before`; the future gives how
        many went (PRUNE_BATCH: there may be more)."""
        return self._submit(lambda connection: audit.prune(connection, before, PRUNE_BATCH),
                            wait=False)

    def set_cooldown(self, backend: str, until: datetime, reason: str) -> None:
        """Persist a provider's cooldown, so a restart does not forget a Retry-After."""
        self._cooldowns[backend] = (until, reason)
        stamp = until.astimezone(UTC).isoformat()

        def op(connection: sqlite3.Connection) -> None:
            connection.execute("INSERT INTO cooldowns VALUES (?, ?, ?) ON CONFLICT (backend) "
                               "DO UPDATE SET until = excluded.until, reason = excluded.reason",
                               (backend, stamp, reason))
        self._submit(op, wait=False)

    def clear_cooldown(self, backend: str) -> None:
        """The provider answered again."""
        if self._cooldowns.pop(backend, None) is None:
            return

        def op(connection: sqlite3.Connection) -> None:
            connection.execute("DELETE FROM cooldowns WHERE backend = ?", (backend,))
        self._submit(op, wait=False)

    def forget_day(self, day: str) -> None:
        """Drop in-memory totals of days before `day` (the file keeps them)."""
        for key in [k for k in self._totals if k[0] < day]:
            del self._totals[key]


def _disk_error(error: sqlite3.Error) -> bool:
    """The disk is full or failing (it may pass), not a bad or foreign file."""
    name = getattr(error, "sqlite_errorname", "")
    return name == "SQLITE_FULL" or name.startswith("SQLITE_IOERR")


def _delete_reservation(connection: sqlite3.Connection, ident: str,
                        finish: Finish | None) -> bool:
    """Delete a reservation and complete its audit row with `finish`; False when it was
    not there (settled already)."""
    deleted = connection.execute("DELETE FROM reservations WHERE id = ? RETURNING audit_row",
                                 (ident,)).fetchall()
    if deleted and finish is not None and deleted[0][0] is not None:
        audit.finish_row(connection, deleted[0][0], finish)
    return bool(deleted)


def _delete(ident: str, finish: Finish | None = None) -> Op:
    def op(connection: sqlite3.Connection) -> None:
        _delete_reservation(connection, ident, finish)
    return op


def _done() -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("%s", future.exception())


# -- read-only access for `mushishi status` ----------------------------------------------

def _open_read_only(path: Path, missing: str) -> sqlite3.Connection:
    """The ledger, never written: read-only through the WAL while the daemon runs; as an
    immutable file when no WAL exists and the directory cannot be written. FileNotFoundError
    with `missing` when there is no file."""
    if not path.is_file():
        raise FileNotFoundError(missing)
    try:
        connection = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5.0)
        connection.execute("SELECT count(*) FROM meta").fetchone()
        return connection
    except sqlite3.OperationalError:
        wal = path.with_name(path.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise
        connection = sqlite3.connect(f"{path.as_uri()}?immutable=1", uri=True)
        connection.execute("SELECT count(*) FROM meta").fetchone()
        return connection


def budget_view(backend: CloudBackend, totals: DayTotals, in_flight: InFlight, day: str,
                cooldown: tuple[datetime, str] | None, now: datetime) -> dict[str, Any]:
    """One provider's budget as `read_budgets`, the egress's GET /status and metrics show it."""
    limits = backend.limits
    until = cooldown[0] if cooldown is not None and cooldown[0] > now else None
    return {
        "day": day,
        "requests_used": totals.requests + in_flight.requests,
        "requests_limit": limits.requests,
        "requests_in_flight": in_flight.requests,
        "tokens_used": totals.tokens,
        "tokens_limit": limits.tokens,
        "cost_used": round(totals.cost, 6) if backend.price is not None else None,
        "cost_limit": limits.cost,
        "estimated_requests": totals.estimated,
        "audio_seconds_used": round(totals.audio_seconds, 3),
        "audio_seconds_limit": limits.audio_seconds,
        "cooldown_until": until.astimezone(UTC).isoformat() if until is not None else None,
        "cooldown_reason": cooldown[1] if until is not None and cooldown is not None else None,
    }


def read_budgets(settings: MushishiSettings, now: datetime | None = None
                 ) -> dict[str, dict[str, Any]]:
    """Per cloud backend: requests/tokens/cost used and limits today (UTC), and any cooldown.

    Opens the ledger read-only (works while mushishi-egress runs or is stopped); raises
    FileNotFoundError when it does not exist yet. `requests_used` includes requests in
    flight (they will be counted); `*_limit` and `cost_used` (no price) are None when
    unlimited or not counted.
    """
    now = now or datetime.now(UTC)
    day = utc_day(now)
    policy = compile_policy(settings)
    path = ledger_path(settings.egress.state_dir)
    connection = _open_read_only(path, f"no budget ledger at {path} yet (mushishi-egress "
                                       "creates it at its first start)")
    try:
        query = _TOTALS_QUERY if _has_audio_seconds(connection) else _TOTALS_QUERY_2
        totals = {backend: DayTotals(requests, prompt, completion, cost, estimated, seconds)
                  for backend, requests, prompt, completion, cost, estimated, seconds in
                  connection.execute(query, (day,))}
        in_flight = {backend: InFlight(count, prompt or 0) for backend, count, prompt in
                     connection.execute(
                         "SELECT backend, count(*), sum(prompt_estimate) FROM reservations "
                         "WHERE day = ? GROUP BY backend", (day,))}
        cooldowns = {backend: (parse_iso(until), reason) for backend, until, reason in
                     connection.execute("SELECT backend, until, reason FROM cooldowns")}
    finally:
        connection.close()
    return {name: budget_view(backend, totals.get(name, DayTotals()),
                              in_flight.get(name, InFlight()), day, cooldowns.get(name), now)
            for name, backend in sorted(policy.cloud.items())}


class AuditUnavailable(Exception):
    """The audit cannot be read; the message names the file and what to do."""


def read_audit(state_dir: str | os.PathLike[str], *, since: datetime | None = None,
               profile: str | None = None) -> list[AuditEntry]:
    """The audit rows from `since` on, of `profile`, oldest first, read-only (while
    mushishi-egress runs or not, by root or a member of its group); requests in flight
    have no `finish` yet. FileNotFoundError names egress.state_dir when there is no ledger;
    AuditUnavailable when the file cannot be read or predates the audit."""
    path = ledger_path(state_dir)
    try:
        connection = _open_read_only(path, (
            f"no audit at {path}: mushishi-egress has never run with egress.state_dir = "
            f"{state_dir} (it creates the file at its first start; check [egress] state_dir "
            "in the config)"))
    except PermissionError:
        raise AuditUnavailable(f"cannot read {path}: permission denied (run as root or as a "
                               "member of group mushishi)") from None
    except sqlite3.Error as error:
        raise AuditUnavailable(f"cannot read {path}: {error}") from None
    try:
        return audit.select(connection, since=since, profile=profile)
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):
            raise AuditUnavailable(f"{path} has no audit yet: restart mushishi-egress once "
                                   "after upgrading (it adds the table at start)") from None
        raise AuditUnavailable(f"cannot read {path}: {error}") from None
    finally:
        connection.close()
