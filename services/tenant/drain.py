"""`mushishi-tenant drain NAME` (ExecStop=): wait for in-flight work to finish, then stop.

The busy probe is read until it reports nothing in flight or `drain_timeout_s` passes;
then `stop_command` runs (for `docker compose … up`, the matching `… down`). A probe that
stays unreadable means the server is gone, and a gone server has nothing left to finish.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import aiohttp

from mushishi.shared.busy_probes import BusyReading, mean_utilisation, read_probe
from mushishi.shared.config import MushishiSettings
from mushishi.shared.gpu import GpuProbe, GpuProbeError
from mushishi.shared.journal import log_extra
from mushishi.shared.notify import Notifier
from mushishi.shared.tenant_commands import compose_command

log = logging.getLogger("mushishi.tenant")

DRAIN_INTERVAL_S = 0.5
UNREADABLE_LIMIT = 3


def default_stop_command(command: list[str]) -> list[str] | None:
    """`docker compose [opts] up [args]` -> `docker compose [opts] down`; None otherwise."""
    return compose_command(command, "down")


async def _reading(settings: MushishiSettings, tenant: str, session: aiohttp.ClientSession,
                   probe_factory: Callable[[], GpuProbe]) -> BusyReading:
    config = settings.tenants[tenant]
    reading = await read_probe(session, tenant, config.busy_probe, settings.gpu.probe_timeout_s)
    if reading is not None:
        return reading
    gpu = probe_factory()
    try:
        async def percent() -> int:
            return (await asyncio.to_thread(gpu.read)).util_percent

        utilisation = await mean_utilisation(percent, settings.gpu.util_sample_s)
    except GpuProbeError as error:
        return BusyReading(tenant, None, f"GPU unreadable: {error}")
    finally:
        gpu.close()
    busy = utilisation >= settings.gpu.busy_util_percent
    return BusyReading(tenant, 1 if busy else 0, f"GPU utilisation {utilisation:.0f}%")


async def drain(settings: MushishiSettings, tenant: str, notifier: Notifier,
                probe_factory: Callable[[], GpuProbe], *,
                clock: Callable[[], float] = time.monotonic,
                sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> int:
    """Wait for in-flight work to reach zero (bounded), then run the stop command."""
    config = settings.tenants[tenant]
    extra = log_extra(backend=tenant)
    budget = config.drain_timeout_s + config.stop_timeout_s + 30
    notifier.notify(f"EXTEND_TIMEOUT_USEC={int(budget * 1_000_000)}")
    started = clock()
    unreadable = 0
    async with aiohttp.ClientSession() as session:
        while True:
            reading = await _reading(settings, tenant, session, probe_factory)
            if reading.in_flight == 0:
                log.info("tenant %s drained after %.1f s", tenant, clock() - started,
                         extra=extra)
                break
            if reading.in_flight is None:
                unreadable += 1
                if unreadable >= UNREADABLE_LIMIT:
                    log.warning("tenant %s: %s; nothing left to drain", tenant,
                                reading.detail, extra=extra)
                    break
            else:
                unreadable = 0
            left = config.drain_timeout_s - (clock() - started)
            if left <= 0:
                log.warning("tenant %s: drain_timeout_s=%.0f s passed with work in flight (%s);"
                            " stopping anyway", tenant, config.drain_timeout_s, reading.detail,
                            extra=extra)
                break
            notifier.status(f"draining: {reading.detail}, {left:.0f} s left")
            await sleep(DRAIN_INTERVAL_S)
    command = config.stop_command or default_stop_command(config.command)
    if command is None:
        return 0
    notifier.status(f"stopping: {' '.join(command)}")
    try:
        process = await asyncio.create_subprocess_exec(*command)
    except OSError as error:
        log.error("tenant %s: cannot run stop command %s: %s", tenant, command[0],
                  error.strerror or error, extra=extra)
        return 1
    try:
        status = await asyncio.wait_for(process.wait(), config.stop_timeout_s)
    except TimeoutError:
        process.kill()
        await process.wait()
        log.error("tenant %s: stop command did not finish within %.0f s", tenant,
                  config.stop_timeout_s, extra=extra)
        return 1
    if status != 0:
        log.error("tenant %s: stop command exited with %s", tenant, status, extra=extra)
        return 1
    return 0
