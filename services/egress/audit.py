"""The audit of what left the box: one row per request the egress handles, never any text.

A row holds when, the request id, profile, tier, backend, model, endpoint, the bytes sent to
and received from the provider, tokens, an outcome (`served`, `refused`, `failed`) and a
short stable reason code; never a prompt, a completion or a provider's error body. Rows live
in the budget ledger's SQLite file and are written by its writer thread in the same
transactions as the budgets (ledger.py), so they survive SIGKILL the same way and a burst
still costs one fsync.

This module is pure: the row, how a request's end maps to an outcome, the schema and its
statements, the retention cutoff, and the per-profile summary `mushishi audit` prints.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

SERVED = "served"
REFUSED = "refused"
FAILED = "failed"
OUTCOMES = (SERVED, REFUSED, FAILED)

# A request's end as the relay knows it (http_api.Outcome.outcome) -> the audit's reason
# code when it was sent or about to be; "success" is the only one that is served.
_FAILED_REASONS = {"client_error": "provider_rejected"}
# Reason of a request in flight when the egress died (settled at the next start).
INTERRUPTED = "interrupted"

_PLAIN = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
UNREADABLE = "?"

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    request_id TEXT NOT NULL,
    profile TEXT NOT NULL,
    tier TEXT NOT NULL,
    backend TEXT NOT NULL,
    model TEXT,
    endpoint TEXT NOT NULL,
    bytes_out INTEGER NOT NULL DEFAULT 0,
    bytes_in INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    estimated INTEGER NOT NULL DEFAULT 0,
    outcome TEXT,
    reason TEXT NOT NULL DEFAULT '',
    status INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS audit_time ON audit (time);
"""

_INSERT = ("INSERT INTO audit (time, request_id, profile, tier, backend, model, endpoint, "
           "bytes_out, bytes_in, prompt_tokens, completion_tokens, estimated, outcome, reason, "
           "status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_FINISH = ("UPDATE audit SET outcome = ?, reason = ?, status = ?, bytes_out = ?, bytes_in = ?, "
           "prompt_tokens = ?, completion_tokens = ?, estimated = ? WHERE id = ?")
_INTERRUPTED = ("UPDATE audit SET outcome = ?, reason = ?, prompt_tokens = ?, "
                "completion_tokens = ?, estimated = 1 WHERE id = ? AND outcome IS NULL")
_PRUNE = ("DELETE FROM audit WHERE id IN "
          "(SELECT id FROM audit WHERE time < ? ORDER BY time LIMIT ?)")
_SELECT = ("SELECT id, time, request_id, profile, tier, backend, model, endpoint, bytes_out, "
           "bytes_in, prompt_tokens, completion_tokens, estimated, outcome, reason, status "
           "FROM audit WHERE time >= ? AND (? IS NULL OR profile = ?) ORDER BY time, id")


@dataclass(frozen=True, slots=True)
class Finish:
    """How a request ended: what completes its audit row."""

    outcome: str
    reason: str = ""
    status: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One request the egress handled. `finish` is None while it is in flight; `id` is the
    row's, once written."""

    time: datetime
    request_id: str
    profile: str
    tier: str
    backend: str
    model: str | None
    endpoint: str
    bytes_out: int = 0
    finish: Finish | None = field(default=None)
    id: int | None = None

    @property
    def outcome(self) -> str | None:
        """served, refused, failed; None while in flight."""
        return self.finish.outcome if self.finish is not None else None

    @property
    def bytes_sent(self) -> int:
        """Bytes of the request sent to a provider (0: nothing left the box)."""
        return self.finish.bytes_out if self.finish is not None else self.bytes_out

    @property
    def tokens(self) -> int:
        """Prompt plus completion tokens."""
        finish = self.finish
        return finish.prompt_tokens + finish.completion_tokens if finish is not None else 0

    def as_json(self) -> dict[str, Any]:
        """The row as `mushishi audit --json` prints it (one JSON object a line)."""
        finish = self.finish or Finish(outcome="", bytes_out=self.bytes_out)
        return {
            "time": self.time.astimezone(UTC).isoformat(),
            "request_id": self.request_id,
            "profile": self.profile,
            "tier": self.tier,
            "backend": self.backend,
            "model": self.model,
            "endpoint": self.endpoint,
            "bytes_out": finish.bytes_out,
            "bytes_in": finish.bytes_in,
            "tokens": finish.prompt_tokens + finish.completion_tokens,
            "prompt_tokens": finish.prompt_tokens,
            "completion_tokens": finish.completion_tokens,
            "tokens_estimated": finish.estimated,
            "outcome": finish.outcome,
            "reason": finish.reason,
            "status": finish.status,
        }


def plain(value: str | None) -> str:
    """A name from a request header as the audit may keep it: short and plain, else `?`
    (a header is not a place for text, and the audit never keeps any)."""
    return value if value is not None and _PLAIN.match(value) else UNREADABLE


def sent_outcome(kind: str) -> tuple[str, str]:
    """(outcome, reason) of a request that reached the relay, from its end as the relay
    names it: only "success" is served; everything else failed, with a stable code."""
    if kind == "success":
        return SERVED, ""
    return FAILED, _FAILED_REASONS.get(kind, kind)


def retention_cutoff(now: datetime, days: int) -> datetime:
    """Rows older than this are pruned (egress.audit_retention_days)."""
    return now - timedelta(days=days)


def stamp(when: datetime) -> str:
    """How a time is stored: UTC, fixed width, so text order is time order."""
    return when.astimezone(UTC).isoformat(timespec="microseconds")


# -- statements (run by the ledger's writer thread, or read-only by `mushishi audit`) -----

def insert(connection: sqlite3.Connection, entry: AuditEntry) -> int:
    """Write a new row (finished, or in flight when `entry.finish` is None); its id."""
    finish = entry.finish
    cursor = connection.execute(_INSERT, (
        stamp(entry.time), entry.request_id, entry.profile, entry.tier,
        entry.backend, entry.model, entry.endpoint,
        finish.bytes_out if finish is not None else entry.bytes_out,
        finish.bytes_in if finish is not None else 0,
        finish.prompt_tokens if finish is not None else 0,
        finish.completion_tokens if finish is not None else 0,
        int(finish.estimated) if finish is not None else 0,
        finish.outcome if finish is not None else None,
        finish.reason if finish is not None else "",
        finish.status if finish is not None else 0))
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def finish_row(connection: sqlite3.Connection, ident: int, finish: Finish) -> None:
    """Complete the row of a request that was in flight."""
    connection.execute(_FINISH, (finish.outcome, finish.reason, finish.status,
                                 finish.bytes_out, finish.bytes_in, finish.prompt_tokens,
                                 finish.completion_tokens, int(finish.estimated), ident))


def interrupt_row(connection: sqlite3.Connection, ident: int, prompt_tokens: int,
                  completion_tokens: int) -> None:
    """A request in flight when the egress died: failed, interrupted, tokens estimated."""
    connection.execute(_INTERRUPTED, (FAILED, INTERRUPTED, prompt_tokens, completion_tokens,
                                      ident))


def prune(connection: sqlite3.Connection, before: datetime, limit: int) -> int:
    """Delete up to `limit` rows older than `before`; how many went."""
    return connection.execute(_PRUNE, (stamp(before), limit)).rowcount


def select(connection: sqlite3.Connection, *, since: datetime | None = None,
           profile: str | None = None) -> list[AuditEntry]:
    """Rows from `since` on (all when None), of `profile` (all when None), oldest first."""
    start = stamp(since) if since is not None else ""
    return [_entry(row) for row in connection.execute(_SELECT, (start, profile, profile))]


def _entry(row: tuple[Any, ...]) -> AuditEntry:
    (ident, time, request_id, profile, tier, backend, model, endpoint, bytes_out, bytes_in,
     prompt, completion, estimated, outcome, reason, status) = row
    when = datetime.fromisoformat(time)
    finish = None if outcome is None else Finish(outcome, reason, status, bytes_out, bytes_in,
                                                 prompt, completion, bool(estimated))
    return AuditEntry(when if when.tzinfo else when.replace(tzinfo=UTC), request_id, profile,
                      tier, backend, model, endpoint, bytes_out, finish, ident)


# -- the per-profile summary --------------------------------------------------------------

@dataclass
class ProfileSummary:
    """What one profile sent out over the rows read."""

    profile: str
    tier: str | None = None
    left: int = 0  # requests with bytes sent to a provider
    bytes_out: int = 0
    bytes_in: int = 0
    tokens: int = 0
    served: int = 0
    failed: int = 0
    refused: int = 0
    in_flight: int = 0


def summarize(entries: Iterable[AuditEntry], profiles: Mapping[str, str]
              ) -> list[ProfileSummary]:
    """Per profile: every configured one (`profiles`: name -> tier), even with no rows, in
    that order, then any other profile the rows name (a removed one, a refused claim)."""
    summaries = {name: ProfileSummary(name, tier) for name, tier in profiles.items()}
    for entry in entries:
        summary = summaries.setdefault(entry.profile, ProfileSummary(entry.profile))
        if summary.tier is None and entry.tier != UNREADABLE:
            summary.tier = entry.tier
        sent = entry.bytes_sent
        if sent > 0:
            summary.left += 1
            summary.bytes_out += sent
        if entry.finish is None:
            summary.in_flight += 1
            continue
        summary.bytes_in += entry.finish.bytes_in
        summary.tokens += entry.tokens
        if entry.finish.outcome == SERVED:
            summary.served += 1
        elif entry.finish.outcome == FAILED:
            summary.failed += 1
        else:
            summary.refused += 1
    return list(summaries.values())


def human_bytes(size: int) -> str:
    """512 B, 3.4 kB, 34 kB, 1.2 MB (powers of 1000)."""
    if size < 1000:
        return f"{size} B"
    value = float(size)
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1000
        if value < 1000 or unit == "TB":
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    raise AssertionError("unreachable")


def summary_line(summary: ProfileSummary) -> str:
    """'private: 0 requests left the box' or 'personal: 12 requests, 34 kB out, 1.2 MB in,
    5,000 tokens', then what did not leave or did not finish, in parentheses."""
    if summary.left == 0:
        text = f"{summary.profile}: 0 requests left the box"
    else:
        text = (f"{summary.profile}: {summary.left:,} request{'s' * (summary.left != 1)}, "
                f"{human_bytes(summary.bytes_out)} out, {human_bytes(summary.bytes_in)} in, "
                f"{summary.tokens:,} tokens")
    notes = [f"{count:,} {what}" for count, what in ((summary.failed, "failed"),
                                                    (summary.refused, "refused"),
                                                    (summary.in_flight, "in flight"))
             if count]
    return text + (f" ({', '.join(notes)})" if notes else "")
