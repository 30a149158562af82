"""The immediate alert for a failed unit: `mushishi-alert NAME` (mushishi-alert@NAME.service,
the OnFailure= of every mushishi unit, NAME being the unit without `.service`).

One message with the failed unit's state and the journal records an alert may carry
(unit_records: systemd's own and mushishi's redacted ones, never a process's output),
through the watchdog's outbox and dedup (messages.plan_unit_failure), then a flush of
everything queued.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from mushishi.services.watchdog import gather, unit_records
from mushishi.services.watchdog.app import Deps, enqueue_and_deliver
from mushishi.services.watchdog.messages import AlertState, Message, plan_unit_failure
from mushishi.shared.config import MushishiSettings
from mushishi.shared.readings import Reading
from mushishi.shared.unit_names import failed_unit

log = logging.getLogger("mushishi.alert")


async def alert_failed_unit(settings: MushishiSettings, instance: str, deps: Deps) -> int:
    """Queue the alert for the unit `instance` names (unless sent within repeat_after_h) and
    deliver the outbox."""
    unit = failed_unit(instance)
    config = settings.watchdog
    bus = await gather.connect_system_bus(deps.system_bus_address)
    try:
        summary = await gather.unit_failure_summary(bus, unit)
    finally:
        if not isinstance(bus, Reading):
            bus.disconnect()
    lines = await unit_records.read_alert_lines(deps.journalctl, unit,
                                                config.alert_journal_lines, config.http_timeout_s)
    now = deps.now()
    sent: list[bool] = []

    def plan(state: AlertState) -> tuple[list[Message], AlertState]:
        message, new_state = plan_unit_failure(
            state, unit, summary=summary, records=lines, now=now,
            repeat_after=timedelta(hours=config.repeat_after_h), hostname=deps.hostname)
        sent.append(message is not None)
        return ([message] if message else []), new_state

    report = await enqueue_and_deliver(settings, deps, plan)
    if sent and not sent[0]:
        log.info("alert for %s already sent within %gh (watchdog.repeat_after_h); not repeated",
                 unit, config.repeat_after_h)
    log.info("alert for %s: %s; %d delivered, %d queued", unit, summary, report.delivered,
             report.remaining)
    deps.notifier.status(f"{report.delivered} delivered, {report.remaining} queued")
    return 0
