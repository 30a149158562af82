"""mushishi-watchdog wiring: gather facts, run the checks, record them, alert through ntfy.

gather (adapters) -> checks (pure) -> <state_dir>/last.json -> messages.plan_watchdog (pure)
-> outbox -> ntfy. The same outbox and alert state serve mushishi-alert@ (failed_unit.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import Gauge

from mushishi.services.watchdog import checks, gather
from mushishi.services.watchdog.checks import CheckResult, Status
from mushishi.services.watchdog.messages import AlertState, Message, plan_watchdog
from mushishi.services.watchdog.ntfy import Publisher
from mushishi.services.watchdog.outbox import Outbox, Report, deliver, state_lock
from mushishi.shared.config import MushishiSettings
from mushishi.shared.config.backup import display_repository
from mushishi.shared.config.router import connect_host, connect_url, unix_listen_path
from mushishi.shared.credentials import find_credential
from mushishi.shared.files import read_json, write_json
from mushishi.shared.metrics import new_registry, write_textfile_or_warn
from mushishi.shared.notify import Notifier
from mushishi.shared.readings import Reading, read_bench_rows, read_json_object
from mushishi.shared.tenant_confinement import TENANTS_RUN_DIR

log = logging.getLogger("mushishi.watchdog")

RESTIC_LIMIT_S = 300.0


def local_now() -> datetime:
    """Now, timezone-aware, in the machine's local zone (the heartbeat weekday's zone)."""
    return datetime.now().astimezone()


@dataclass
class Deps:
    """Everything the watchdog learns from the world, injectable in tests."""

    now: Callable[[], datetime] = local_now
    hostname: str = field(default_factory=socket.gethostname)
    statvfs: Callable[[str], os.statvfs_result] = os.statvfs
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    dotenv: Mapping[str, str | None] = field(default_factory=dict)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    notifier: Notifier = field(default_factory=Notifier)
    system_bus_address: str | None = None  # None: the system bus ($DBUS_SYSTEM_BUS_ADDRESS)
    journalctl: str = field(default_factory=gather.find_journalctl)
    retry_delays: tuple[float, ...] = (5.0, 15.0)
    monotonic: Callable[[], float] = time.monotonic
    tenants_run_dir: Path = TENANTS_RUN_DIR


async def run_checks(settings: MushishiSettings, deps: Deps) -> list[CheckResult]:
    """Gather every source concurrently, then evaluate every check."""
    config = settings.watchdog
    limit = config.http_timeout_s
    floor = settings.cpu_floor
    floor_unit = "mushishi-cpu-floor.service"
    models_url = f"{connect_url(floor.host, floor.port)}/v1/models"
    backup_dir = Path(settings.backup.state_dir)
    bus = await gather.connect_system_bus(deps.system_bus_address)
    try:
        async with asyncio.TaskGroup() as group:
            snapshots = group.create_task(gather.snapshot_times(
                settings, environ=deps.environ, dotenv=deps.dotenv, limit_s=RESTIC_LIMIT_S))
            units = {unit: group.create_task(gather.unit_state(bus, unit))
                     for unit in dict.fromkeys([*config.always_on_units, floor_unit])}
            models = group.create_task(gather.models_served(
                connect_host(floor.host), floor.port, limit))
            status = group.create_task(gather.router_status(
                unix_listen_path(settings.router.listen), limit))
            reading = group.create_task(gather.gpu_reading(bus))
            tenants = group.create_task(gather.tenants_layer(deps.tenants_run_dir,
                                                             deps.now().timestamp()))
    finally:
        if not isinstance(bus, Reading):
            bus.disconnect()
    now = deps.now()
    last_backup = read_json_object(backup_dir / "last.json",
                            f"no backup has run yet (no {backup_dir}/last.json)")
    results = [
        checks.backup_age(snapshots.result(), now=now, max_age_days=config.backup_max_age_days),
        checks.backup_result(last_backup),
        checks.restore_verify(last_backup),
        checks.backup_check(read_json_object(
            backup_dir / "check.json",
            f"restic check has not run yet (monthly mushishi-backup-check.timer; no "
            f"{backup_dir}/check.json)")),
    ]
    results += copy_checks(settings, last_backup, now)
    results += [checks.disk(mount, gather.disk_usage(mount, deps.statvfs),
                            max_percent=config.disk_max_percent)
                for mount in config.disk_mounts]
    results += [checks.unit_active(unit, units[unit].result())
                for unit in config.always_on_units]
    results.append(checks.cpu_floor(floor_unit, units[floor_unit].result(), models.result(),
                                    alias=floor.alias, url=models_url))
    results.append(checks.cloud_share(status.result(), max_share=config.cloud_share_max,
                                      min_requests=config.cloud_share_min_requests))
    results.append(checks.gpu(reading.result(), max_temperature_c=config.gpu_max_temperature_c))
    results.append(checks.bench(read_bench_rows(Path(config.bench_results))))
    results += checks.sovereignty(checks.sovereignty_layers(
        status.result(), tenants.result(), gather.egress_socket(settings.router.egress_socket)))
    return results


def copy_checks(settings: MushishiSettings, last_backup: Reading[dict[str, Any]],
                now: datetime) -> list[CheckResult]:
    """One check per off-box copy, from the backup's last.json."""
    config = settings.watchdog
    limit, key = ((config.copy_max_age_days, "watchdog.copy_max_age_days")
                  if config.copy_max_age_days is not None
                  else (config.backup_max_age_days, "watchdog.backup_max_age_days"))
    return [checks.backup_copy(display_repository(copy.repository), last_backup, now=now,
                               max_age_days=limit, limit_key=key)
            for copy in settings.backup.copies]


def ntfy_credentials(settings: MushishiSettings, deps: Deps) -> tuple[str | None, str | None]:
    """(topic, token); the topic is required to deliver, the token optional."""
    topic = find_credential(settings.ntfy.topic_credential, environ=deps.environ,
                            dotenv=deps.dotenv)
    token = None
    if settings.ntfy.token_credential:
        found = find_credential(settings.ntfy.token_credential, environ=deps.environ,
                                dotenv=deps.dotenv)
        token = found.value if found else None
    return (topic.value if topic else None), token


async def enqueue_and_deliver(settings: MushishiSettings, deps: Deps,
                              plan: Callable[[AlertState], tuple[list[Message], AlertState]]
                              ) -> Report:
    """Under the state lock: decide, queue durably, save the state, then flush the outbox."""
    state_dir = Path(settings.watchdog.state_dir)
    outbox = Outbox(state_dir / "outbox")
    async with state_lock(state_dir, sleep=deps.sleep):
        state = AlertState.from_json(read_json(state_dir / "alerts.json"))
        messages, new_state = plan(state)
        now = deps.now()
        for message in messages:
            outbox.put(message, now)
            log.info("queued %s: %s", message.kind, message.title)
        write_json(state_dir / "alerts.json", new_state.to_json(), 0o640, pretty=True)
        topic, token = ntfy_credentials(settings, deps)
        if topic is None:
            error = (f"the ntfy topic credential {settings.ntfy.topic_credential!r} "
                     f"(ntfy.topic_credential) is missing: alerts wait in {outbox.directory}")
            log.error("%s", error)
            return Report(0, len(outbox), error)
        async with aiohttp.ClientSession() as session:
            publisher = Publisher(session, settings.ntfy.url, topic, token,
                                  settings.watchdog.http_timeout_s)
            return await deliver(outbox, publisher.publish, sleep=deps.sleep,
                                 retry_delays=deps.retry_delays)


def watchdog_metrics(record: dict[str, Any]) -> Any:
    """The run's facts for node_exporter's textfile collector."""
    registry = new_registry("watchdog")
    Gauge("mushishi_watchdog_last_run_timestamp_seconds", "End of the last watchdog run.",
          registry=registry).set(datetime.fromisoformat(record["time"]).timestamp())
    Gauge("mushishi_watchdog_run_duration_seconds", "Duration of the last watchdog run.",
          registry=registry).set(record["duration_s"])
    Gauge("mushishi_watchdog_problems", "Checks that found a problem in the last run.",
          registry=registry).set(len(record["problems"]))
    status = Gauge("mushishi_watchdog_check_status", "1 for each check's current status.",
                   ["check", "status"], registry=registry)
    for check in record["checks"]:
        for value in Status:
            status.labels(check=check["name"], status=value.value).set(
                1 if check["status"] == value.value else 0)
    Gauge("mushishi_watchdog_outbox_messages", "Alerts waiting for ntfy.",
          registry=registry).set(record["delivery"]["queued"])
    return registry


async def run_watchdog(settings: MushishiSettings, deps: Deps) -> int:
    """One watchdog run; exit 0 whenever the checks ran, problems or not."""
    config = settings.watchdog
    state_dir = Path(config.state_dir)
    started = deps.monotonic()
    deps.notifier.status("checking")
    results = await run_checks(settings, deps)
    now = deps.now()
    problems = [c for c in results if c.status is Status.PROBLEM]
    for check in results:
        level = logging.WARNING if check.status is Status.PROBLEM else logging.INFO
        log.log(level, "%s: %s: %s", check.name, check.status.value, check.detail)
    record: dict[str, Any] = {
        "time": now.isoformat(),
        "problems": [c.name for c in problems],
        "checks": [c.as_dict() for c in results],
    }
    report = await enqueue_and_deliver(settings, deps, lambda state: plan_watchdog(
        state, results, now=now, repeat_after=timedelta(hours=config.repeat_after_h),
        heartbeat_weekday=config.heartbeat_weekday, hostname=deps.hostname))
    record["delivery"] = {"delivered": report.delivered, "queued": report.remaining,
                          "last_error": report.last_error}
    record["duration_s"] = round(deps.monotonic() - started, 3)
    write_json(state_dir / "last.json", record, 0o640, pretty=True)
    warning = write_textfile_or_warn(watchdog_metrics(record), config.textfile_dir,
                                     "mushishi_watchdog", "watchdog.textfile_dir")
    if warning is not None:
        log.warning("%s", warning)
    missing = sum(1 for c in results if c.status is Status.MISSING_SOURCE)
    summary = (f"{len(results) - len(problems) - missing} ok, {len(problems)} problem(s), "
               f"{missing} not checked; {report.delivered} alert(s) sent, "
               f"{report.remaining} queued")
    log.info("watchdog: %s", summary)
    deps.notifier.status(summary)
    return 0

