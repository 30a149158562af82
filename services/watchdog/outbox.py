"""The outbox: every alert is a file under <state_dir>/outbox until ntfy has accepted it.

A message is written (atomically, fsynced) before any attempt to send it and removed only
after ntfy answers 2xx, so nothing is lost when ntfy is down, rate-limited or the process
dies: the next watchdog run or alert delivers it. Delivery is at least once (a crash
between ntfy's answer and the removal sends that message again). The topic and token are
never written here; they are added at delivery time from the credentials.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from mushishi.services.watchdog.messages import Message
from mushishi.services.watchdog.ntfy import Attempt, Delivery
from mushishi.shared.files import JsonFileError, load_json_object, write_json
from mushishi.shared.locks import exclusive_lock

log = logging.getLogger("mushishi.watchdog.outbox")


@dataclass(frozen=True, slots=True)
class Item:
    """One queued message."""

    path: Path
    created: datetime
    message: Message
    attempts: int
    last_error: str | None


@dataclass
class Report:
    """What one delivery round did."""

    delivered: int = 0
    remaining: int = 0
    last_error: str | None = None


class Outbox:
    """A directory of queued messages, oldest first."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def put(self, message: Message, now: datetime) -> Path:
        """Queue a message durably."""
        self.directory.mkdir(parents=True, exist_ok=True)
        # Sorted by name = sent in order: the time, then a per-machine monotonic tiebreak.
        name = (f"{now.astimezone(UTC).strftime('%Y%m%dT%H%M%S%f')}-"
                f"{time.monotonic_ns():020d}-{uuid.uuid4().hex[:6]}.json")
        data = {"created": now.isoformat(), "attempts": 0, "last_error": None,
                "message": message.as_dict()}
        path = self.directory / name
        write_json(path, data, 0o640)
        return path

    def pending(self) -> list[Item]:
        """Queued messages, oldest first (unreadable files are set aside, never deleted)."""
        items = []
        if not self.directory.is_dir():
            return items
        for path in sorted(self.directory.glob("*.json")):
            try:
                data = load_json_object(path)
                if data is None:  # gone since the listing
                    continue
                items.append(Item(path, datetime.fromisoformat(data["created"]),
                                  Message.from_dict(data["message"]),
                                  int(data.get("attempts", 0)), data.get("last_error")))
            except (JsonFileError, ValueError, KeyError, TypeError) as error:
                log.error("outbox file %s is unreadable (%s); moved aside as .bad", path, error)
                with contextlib.suppress(OSError):
                    path.rename(path.with_suffix(".bad"))
        return items

    def record_attempt(self, item: Item, error: str) -> Item:
        """Count a failed attempt on the file itself; the item as it now is on disk."""
        updated = dataclasses.replace(item, attempts=item.attempts + 1, last_error=error)
        data = {"created": item.created.isoformat(), "attempts": updated.attempts,
                "last_error": error, "message": item.message.as_dict()}
        write_json(item.path, data, 0o640)
        return updated

    def remove(self, item: Item) -> None:
        """Forget a delivered message."""
        with contextlib.suppress(FileNotFoundError):
            item.path.unlink()

    def __len__(self) -> int:
        return len(list(self.directory.glob("*.json"))) if self.directory.is_dir() else 0


async def deliver(outbox: Outbox, publish: Callable[[Message], Awaitable[Attempt]], *,
                  sleep: Callable[[float], Awaitable[None]],
                  retry_delays: Sequence[float] = (5.0, 15.0)) -> Report:
    """Send every queued message in order.

    A 429 waits `retry_delays` (injected `sleep`) and tries again; after the last delay
    the rest stays queued for the next run. An unreachable server ends the round at once.
    A message ntfy rejects (401, 403, 400…) stays queued with the error while the others go.
    """
    report = Report()
    delays = list(retry_delays)
    items = outbox.pending()
    index = 0
    while index < len(items):
        item = items[index]
        attempt = await publish(item.message)
        if attempt.delivery is Delivery.DELIVERED:
            outbox.remove(item)
            report.delivered += 1
            index += 1
            continue
        items[index] = outbox.record_attempt(item, attempt.detail)
        report.last_error = attempt.detail
        if attempt.delivery is Delivery.RATE_LIMITED and delays:
            delay = delays.pop(0)
            log.info("ntfy rate limit (%s); retrying in %.0fs", attempt.detail, delay)
            await sleep(delay)
            continue
        if attempt.delivery is Delivery.REJECTED:
            log.error("ntfy rejected %r: %s (kept in %s)", item.message.title, attempt.detail,
                      outbox.directory)
            index += 1
            continue
        log.warning("ntfy: %s; %d message(s) wait in %s", attempt.detail,
                    len(items) - index, outbox.directory)
        break
    report.remaining = len(outbox)
    return report


@contextlib.asynccontextmanager
async def state_lock(state_dir: Path, *, sleep: Callable[[float], Awaitable[None]],
                     wait_s: float = 120.0) -> AsyncIterator[None]:
    """One writer of alerts.json and the outbox at a time (watchdog and alerts).

    Raises LockTimeout (a TimeoutError naming the lock file) after `wait_s`.
    """
    async with exclusive_lock(state_dir / "alerts.lock", wait_s=wait_s, poll_s=0.2,
                              sleep=sleep):
        yield
