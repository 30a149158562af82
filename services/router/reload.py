"""What a reload (SIGHUP, `systemctl reload mushishi-router`) may change while the router runs.

A reload is all or nothing. Keys, unix peers and profiles (tiers, chains, queues, modes, media
prefixes) are compiled from the new config into a new route table that replaces the running
one in a single assignment: a request reads the table once, so a request in flight finishes
on the table it started with, and no request ever sees new keys with old profiles. What the
running process has built from the rest of the config (listening sockets, the pools and
health state of each backend, timeouts, the egress socket, the tracer) cannot be swapped
like that: a new config that changes any of it is refused as a whole, the running table
stays as it was, and `/status` (`reload.pending_restart`) names what needs a restart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mushishi.shared.config.settings import MushishiSettings

# [router] keys a reload applies; every other [router] key needs a restart.
LIVE_ROUTER_KEYS: frozenset[str] = frozenset({"unix_peers"})

RESTART_HINT = ("`systemctl restart mushishi-router` applies them (socket-activated: no "
                "connection is dropped)")


def needs_restart(running: MushishiSettings, fresh: MushishiSettings) -> list[str]:
    """The config keys that differ between `running` and `fresh` and that only a restart can
    apply (`router.listen`, `backends.gpu`, `traces`); empty when a reload can apply all."""
    pending = []
    old_router, new_router = running.router.model_dump(), fresh.router.model_dump()
    for key in sorted(old_router.keys() | new_router.keys()):
        if key not in LIVE_ROUTER_KEYS and old_router.get(key) != new_router.get(key):
            pending.append(f"router.{key}")
    for name in sorted(running.backends.keys() | fresh.backends.keys()):
        if running.backends.get(name) != fresh.backends.get(name):
            pending.append(f"backends.{name}")
    if running.traces != fresh.traces:
        pending.append("traces")
    return pending


@dataclass(slots=True)
class ReloadStatus:
    """The outcome of the last reload, as `/status` shows it under `reload`."""

    pending_restart: list[str] = field(default_factory=list)
    detail: str = "no reload since the router started"

    def applied(self, now: float) -> None:
        """A reload replaced the route table."""
        self.pending_restart = []
        self.detail = (f"reload applied at {_time(now)}: keys, unix peers and profiles are "
                       "those of the config file")

    def refused(self, now: float, pending: list[str], path: str) -> str:
        """A reload was refused for `pending`; the sentence to log."""
        self.pending_restart = list(pending)
        self.detail = (f"reload refused at {_time(now)}: {path} changes {', '.join(pending)}, "
                       f"which a reload cannot apply; the running config (keys, peers and "
                       f"profiles included) is unchanged; {RESTART_HINT}")
        return self.detail

    def as_json(self) -> dict[str, Any]:
        """The `reload` object of /status."""
        return {"pending_restart": list(self.pending_restart), "detail": self.detail}


def _time(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds")
