"""`mushishi-watchdog --follow-sovereignty` (mushishi-sovereignty.service): every sovereignty
layer followed live, and one alert per change of any of them, through the watchdog's outbox.

Every POLL_S it reads the router's three layers (its /status over the unix socket), the
tenants' (their published probes, the shared reader the router uses) and the egress
socket's mode (gather.py, checks.sovereignty_layers), and compares each layer with what was
last announced (alerts.json's `sovereignty`, under the state lock: the daily watchdog and
mushishi-alert@ write the same file). A change is announced once (messages.due_layers and
plan_sovereignty): not in force, not known for longer than UNKNOWN_GRACE_S, in force again.
Nothing is written while nothing changes. Messages that ntfy did not take wait in the
outbox and are retried every RETRY_S.

Why a long-running watcher and not a timer or a path unit: see docs/alerts.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta
from pathlib import Path

from mushishi.services.watchdog import gather
from mushishi.services.watchdog.app import Deps, enqueue_and_deliver
from mushishi.services.watchdog.checks import LayerReading, sovereignty_layers
from mushishi.services.watchdog.messages import (
    AlertState,
    Message,
    Seen,
    due_layers,
    plan_sovereignty,
)
from mushishi.shared.config import MushishiSettings
from mushishi.shared.config.router import unix_listen_path
from mushishi.shared.files import read_json

log = logging.getLogger("mushishi.sovereignty")

POLL_S = 2.0
UNKNOWN_GRACE_S = 60.0
RETRY_S = 60.0


async def read_layers(settings: MushishiSettings, deps: Deps) -> list[LayerReading]:
    """Every sovereignty layer now."""
    limit = settings.watchdog.http_timeout_s
    status, tenants = await asyncio.gather(
        gather.router_status(unix_listen_path(settings.router.listen), limit),
        gather.tenants_layer(deps.tenants_run_dir, deps.now().timestamp()))
    return sovereignty_layers(status, tenants,
                              gather.egress_socket(settings.router.egress_socket))


def summary(layers: list[LayerReading]) -> str:
    """`config ✓, connect-time ✓, kernel ✓, tenants ✓, egress ✓` (`-`: not answering)."""
    return ", ".join(f"{layer.layer} {layer.mark if layer.known else '-'}" for layer in layers)


class Follower:
    """What one watcher remembers between polls."""

    def __init__(self, settings: MushishiSettings, deps: Deps, *,
                 unknown_grace: timedelta = timedelta(seconds=UNKNOWN_GRACE_S)) -> None:
        self.settings = settings
        self.deps = deps
        self.unknown_grace = unknown_grace
        self.seen: dict[str, Seen] = {}
        self.announced = AlertState.from_json(
            read_json(Path(settings.watchdog.state_dir) / "alerts.json")).sovereignty
        self.queued = 0
        self.retry_at: datetime | None = None

    async def poll(self) -> list[LayerReading]:
        """Read every layer; announce what changed; retry what waits in the outbox."""
        layers = await read_layers(self.settings, self.deps)
        now = self.deps.now()
        due, self.seen = due_layers(self.announced, self.seen, layers, now=now,
                                    unknown_grace=self.unknown_grace)
        retry = self.queued and self.retry_at is not None and now >= self.retry_at
        if due or retry:
            await self._announce(due, now)
        return layers

    async def _announce(self, due: list[LayerReading], now: datetime) -> None:
        sent: list[Message] = []

        def plan(state: AlertState) -> tuple[list[Message], AlertState]:
            messages, new_state = plan_sovereignty(state, due, hostname=self.deps.hostname)
            sent.extend(messages)
            self.announced = new_state.sovereignty
            return messages, new_state

        for layer in due:
            level = logging.INFO if layer.verdict else logging.ERROR
            log.log(level, "sovereignty layer %s %s: %s", layer.layer, layer.mark, layer.detail)
        report = await enqueue_and_deliver(self.settings, self.deps, plan)
        self.queued = report.remaining
        self.retry_at = now + timedelta(seconds=RETRY_S) if report.remaining else None
        if sent or report.delivered:
            log.info("%d sovereignty alert(s) queued; %d delivered, %d waiting for ntfy",
                     len(sent), report.delivered, report.remaining)


async def follow_sovereignty(settings: MushishiSettings, deps: Deps, stop: asyncio.Event, *,
                             poll_s: float = POLL_S) -> int:
    """Poll until `stop` is set (READY=1 after the first poll, WATCHDOG=1 on every one)."""
    follower = Follower(settings, deps)
    notifier = deps.notifier
    ready = False
    while not stop.is_set():
        try:
            layers = await follower.poll()
        except Exception:  # one bad poll must not end the watch; the next one retries
            log.exception("a sovereignty poll failed")
            line = "a poll failed (see the journal); retrying"
        else:
            line = f"following: {summary(layers)}"
            if follower.queued:
                line += f"; {follower.queued} alert(s) waiting for ntfy"
        if ready:
            notifier.status(line)
        else:
            notifier.ready(line)
            ready = True
        notifier.watchdog()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(poll_s):
                await stop.wait()
    notifier.stopping("stopping")
    return 0
