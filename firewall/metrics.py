"""node_exporter textfile for the firewall: is a change pending, what happened last.

Written after every change (apply, confirm, rollback, rejection, restore), so an alert
can fire on a change left unconfirmed or a ruleset rolled back or rejected.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from prometheus_client import Gauge

from mushishi.firewall.state import CONFIRMED, StateDir
from mushishi.shared.metrics import new_registry, write_textfile

log = logging.getLogger("mushishi.firewall")

TEXTFILE_NAME = "mushishi_firewall"
ACTIONS = ("applied", "confirmed", "rolled-back", "rejected", "restored", "failed",
           "rollback-failed", "restore-failed")


def render_textfile(state: StateDir, directory: str) -> Path:
    """Write `<directory>/mushishi_firewall.prom` from the state directory."""
    registry = new_registry("firewall")
    pending = Gauge("mushishi_firewall_pending_confirmation",
                    "1 while an applied ruleset waits for confirmation.", registry=registry)
    deadline = Gauge("mushishi_firewall_pending_deadline_timestamp_seconds",
                     "When the pending ruleset rolls back (0 when none is pending).",
                     registry=registry)
    confirmed = Gauge("mushishi_firewall_confirmed_ruleset",
                      "1 when a confirmed ruleset exists for boot to restore.",
                      registry=registry)
    last_time = Gauge("mushishi_firewall_last_change_timestamp_seconds",
                      "Time of the last apply, confirm, rollback, rejection or restore.",
                      registry=registry)
    last_action = Gauge("mushishi_firewall_last_change_action",
                        "1 for the action of the last change, 0 for the others.", ["action"],
                        registry=registry)
    current = state.pending()
    pending.set(1 if current else 0)
    deadline.set(current.deadline if current else 0)
    confirmed.set(1 if (state.path / CONFIRMED).exists() else 0)
    last = state.last()
    if last:
        last_time.set(datetime.fromisoformat(last["time"]).timestamp())
    for action in ACTIONS:
        last_action.labels(action=action).set(1 if last and last["action"] == action else 0)
    return write_textfile(registry, directory, TEXTFILE_NAME)


def export(state: StateDir, directory: str | None) -> None:
    """render_textfile, logging instead of failing: metrics never block a firewall change."""
    if not directory:
        return
    try:
        render_textfile(state, directory)
    except OSError as error:
        log.warning("cannot write the firewall textfile in %s: %s", directory, error)
