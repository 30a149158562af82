"""What to tell the phone, decided over plain data: problems, dedup, recovery, heartbeat.

* Only problems are sent. The same set of problems (by check name, not by the numbers in
  the detail) is not repeated within `repeat_after`; a changed set is sent at once.
* When every problem clears, one recovery message.
* A heartbeat on the first run on or after each `heartbeat_weekday` (local time), so a
  silent phone means "all is well", not "the watchdog died".
* A failed unit (mushishi-alert@) is one message per unit per `repeat_after`, carrying only
  systemd's and mushishi's own records (unit_records.py).
* A sovereignty layer (mushishi-sovereignty.service) is one message per change of its
  state: not in force (naming the tenant, for the tenants layer), not known (once it has
  lasted `unknown_grace`: a tenant is not known for a second while it starts), and in
  force again. The state last announced per layer is kept, so a restart repeats nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any

from mushishi.services.watchdog.checks import CheckResult, LayerReading, Status

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MAX_MESSAGE_BYTES = 3900  # ntfy turns a message over 4096 bytes into an attachment

PRIORITY_MIN, PRIORITY_LOW, PRIORITY_DEFAULT, PRIORITY_HIGH, PRIORITY_MAX = 1, 2, 3, 4, 5


@dataclass(frozen=True, slots=True)
class Message:
    """One notification, independent of how it is delivered."""

    kind: str  # problems | reminder | recovery | heartbeat | unit-failed | sovereignty
    title: str
    body: str
    priority: int
    tags: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """For the outbox."""
        return {"kind": self.kind, "title": self.title, "body": self.body,
                "priority": self.priority, "tags": list(self.tags)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Message:
        """From the outbox."""
        return cls(str(data["kind"]), str(data["title"]), str(data["body"]),
                   int(data["priority"]), tuple(data.get("tags") or ()))


@dataclass
class AlertState:
    """What was already said, persisted in <state_dir>/alerts.json."""

    notified: dict[str, str] = field(default_factory=dict)  # problem name -> detail sent
    problems_sent_at: datetime | None = None
    last_heartbeat: date | None = None
    units_sent_at: dict[str, datetime] = field(default_factory=dict)
    sovereignty: dict[str, str] = field(default_factory=dict)  # layer -> key announced

    def to_json(self) -> dict[str, Any]:
        """Serialisable form."""
        return {
            "notified": dict(self.notified),
            "problems_sent_at": self.problems_sent_at.isoformat()
            if self.problems_sent_at else None,
            "last_heartbeat": self.last_heartbeat.isoformat() if self.last_heartbeat else None,
            "units_sent_at": {k: v.isoformat() for k, v in self.units_sent_at.items()},
            "sovereignty": dict(self.sovereignty),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> AlertState:
        """Tolerant of a missing or older file: unknown means nothing was sent."""
        data = data or {}
        sent_at = data.get("problems_sent_at")
        heartbeat = data.get("last_heartbeat")
        return cls(
            notified={str(k): str(v) for k, v in (data.get("notified") or {}).items()},
            problems_sent_at=datetime.fromisoformat(sent_at) if sent_at else None,
            last_heartbeat=date.fromisoformat(heartbeat) if heartbeat else None,
            units_sent_at={str(k): datetime.fromisoformat(v)
                           for k, v in (data.get("units_sent_at") or {}).items()},
            sovereignty={str(k): str(v) for k, v in (data.get("sovereignty") or {}).items()},
        )


def truncate(text: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """Cut `text` to `limit` UTF-8 bytes, saying so."""
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    note = "\n… (truncated)"
    return raw[: limit - len(note.encode())].decode("utf-8", "ignore") + note


def heartbeat_due(last: date | None, today: date, weekday: str) -> bool:
    """True on the first run on or after the latest `weekday` not yet covered."""
    target = WEEKDAYS.index(weekday)
    latest = today - timedelta(days=(today.weekday() - target) % 7)
    return last is None or last < latest


def _line(check: CheckResult) -> str:
    return f"- **{check.name}**: {check.detail}"


def plan_watchdog(state: AlertState, checks: Sequence[CheckResult], *, now: datetime,
                  repeat_after: timedelta, heartbeat_weekday: str, hostname: str
                  ) -> tuple[list[Message], AlertState]:
    """Messages for one watchdog run and the state after sending them.

    `now` is timezone-aware local time: the heartbeat weekday is the box owner's weekday.
    """
    problems = [c for c in checks if c.status is Status.PROBLEM]
    missing = [c for c in checks if c.status is Status.MISSING_SOURCE]
    current = {c.name: c.detail for c in problems}
    messages: list[Message] = []
    new = replace(state, notified=dict(state.notified), units_sent_at=dict(state.units_sent_at))

    if current:
        changed = set(current) != set(state.notified)
        stale = (state.problems_sent_at is None
                 or now - state.problems_sent_at >= repeat_after)
        if changed or stale:
            fresh = [c for c in problems if c.name not in state.notified]
            cleared = sorted(set(state.notified) - set(current))
            count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
            title = f"mushishi on {hostname}: {count}" if changed else \
                f"mushishi on {hostname}: still {count}"
            lines = []
            if fresh and state.notified:
                lines.append("New: " + ", ".join(c.name for c in fresh))
            lines += [_line(c) for c in problems]
            if cleared:
                lines.append("Cleared: " + ", ".join(cleared))
            if missing:
                lines.append("Not checked: " + "; ".join(f"{c.name} ({c.detail})"
                                                         for c in missing))
            messages.append(Message("problems" if changed else "reminder", title,
                                    truncate("\n".join(lines)), PRIORITY_HIGH, ("warning",)))
            new.notified = current
            new.problems_sent_at = now
    elif state.notified:
        lines = [f"- **{name}** cleared" for name in sorted(state.notified)]
        messages.append(Message("recovery", f"mushishi on {hostname}: all clear",
                                truncate("\n".join(lines)), PRIORITY_DEFAULT,
                                ("white_check_mark",)))
        new.notified = {}
        new.problems_sent_at = None

    today = now.date()
    if heartbeat_due(state.last_heartbeat, today, heartbeat_weekday):
        ok = sum(1 for c in checks if c.status is Status.OK)
        lines = [f"The watchdog ran at {now.isoformat(timespec='minutes')}: {ok} checks ok, "
                 f"{len(problems)} problem{'s' if len(problems) != 1 else ''}, "
                 f"{len(missing)} not checked."]
        lines += [_line(c) for c in problems]
        if missing:
            lines.append("Not checked: " + "; ".join(f"{c.name} ({c.detail})"
                                                     for c in missing))
        messages.append(Message("heartbeat", f"mushishi on {hostname}: weekly heartbeat",
                                truncate("\n".join(lines)), PRIORITY_LOW, ("green_heart",)))
        new.last_heartbeat = today
    return messages, new


def plan_unit_failure(state: AlertState, unit: str, *, summary: str, records: Sequence[str],
                      now: datetime, repeat_after: timedelta, hostname: str
                      ) -> tuple[Message | None, AlertState]:
    """The immediate alert for a failed unit, unless one was sent within `repeat_after`.

    `records` are the journal lines an alert may carry (unit_records.py): systemd's and
    mushishi's own, never a process's output."""
    last = state.units_sent_at.get(unit)
    if last is not None and now - last < repeat_after:
        return None, state
    tail = "\n".join(records) if records else "(no records found)"
    header = (f"{summary}\n\nsystemd's and mushishi's own records (the output of the unit's "
              f"processes is left out; `journalctl -u {unit}` on the box has it):\n")
    # Keep the newest lines when the tail does not fit: they say why it failed.
    budget = MAX_MESSAGE_BYTES - len(header.encode()) - 16
    raw = tail.encode("utf-8")
    if len(raw) > budget:
        tail = "…\n" + raw[len(raw) - budget:].decode("utf-8", "ignore")
    body = f"{header}```\n{tail}\n```"
    new = replace(state, units_sent_at={**state.units_sent_at, unit: now})
    return Message("unit-failed", f"mushishi on {hostname}: {unit} failed", body,
                   PRIORITY_HIGH, ("rotating_light",)), new


# -- sovereignty layers (mushishi-sovereignty.service) -------------------------------------

# What to do when a layer is not in force, said in every such alert.
_LAYER_HINTS = {
    "config": "the router refuses to start on such a config: `mushishi config check`",
    "connect-time": "the router runs with its connect-time check off: `mushishi status` names "
                    "the test-only switch and where it is set",
    "kernel": "the router's unit is not confined by the kernel (IPAddressDeny=): "
              "`systemctl cat mushishi-router` and docs/security.md",
    "tenants": "the router refuses T1 work to that tenant's backends meanwhile; `mushishi "
               "status` shows each tenant's probe, `systemctl restart "
               "mushishi-tenant-network` puts the tenant egress rules back",
    "egress": "`systemctl restart mushishi-egress.socket` recreates the socket as its unit "
              "says",
}


@dataclass(frozen=True, slots=True)
class Seen:
    """A layer's state as last observed, and since when (a watcher's memory, not saved)."""

    key: str
    since: datetime


def due_layers(announced: Mapping[str, str], seen: Mapping[str, Seen],
               layers: Sequence[LayerReading], *, now: datetime, unknown_grace: timedelta
               ) -> tuple[list[LayerReading], dict[str, Seen]]:
    """The layers whose state differs from the one last announced and should be announced
    now, and what is seen after this reading. A layer whose source did not answer keeps its
    last word; a first reading in force needs no message; a not-known state waits for
    `unknown_grace` (it may be a tenant starting)."""
    due: list[LayerReading] = []
    after = dict(seen)
    for layer in layers:
        if not layer.known:
            continue
        before = seen.get(layer.layer)
        since = before.since if before is not None and before.key == layer.key else now
        after[layer.layer] = Seen(layer.key, since)
        last = announced.get(layer.layer)
        if layer.key == last or (last is None and layer.verdict is True):
            continue
        if layer.verdict is None and now - since < unknown_grace:
            continue
        due.append(layer)
    return due, after


def plan_sovereignty(state: AlertState, due: Sequence[LayerReading], *, hostname: str
                     ) -> tuple[list[Message], AlertState]:
    """One message per layer in `due` whose state is not the one announced last: not in
    force, not known, or in force again (recovery); the new state remembers each."""
    announced = dict(state.sovereignty)
    messages = []
    for layer in due:
        last = announced.get(layer.layer)
        if layer.key == last or (last is None and layer.verdict is True):
            announced[layer.layer] = layer.key
            continue
        name = f"sovereignty layer {layer.layer}"
        if layer.verdict is True:
            failing = (last or "").partition(":")[2]  # the tenants it was failing for
            names = f" for tenant {failing.replace(',', ', ')}" if failing else ""
            messages.append(Message(
                "sovereignty", f"mushishi on {hostname}: {name} ✓ again",
                truncate(f"{name} is in force again{names}: {layer.detail}"),
                PRIORITY_DEFAULT, ("white_check_mark",)))
        else:
            what = "NOT in force" if layer.verdict is False else "not known"
            hint = _LAYER_HINTS.get(layer.layer, "")
            messages.append(Message(
                "sovereignty", f"mushishi on {hostname}: {name} {layer.mark}",
                truncate(f"{name} is {what}: {layer.detail}" + (f"\n\n{hint}" if hint else "")),
                PRIORITY_MAX if layer.verdict is False else PRIORITY_HIGH, ("rotating_light",)))
        announced[layer.layer] = layer.key
    return messages, replace(state, sovereignty=announced)
