"""`mushishi-tenant run NAME` (ExecStart=, Type=notify): the tenant's command in the
foreground, READY=1 only once its health URL answers 2xx, SIGTERM passed on at stop."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable

import aiohttp

from mushishi.shared.config.gpu import TenantSettings
from mushishi.shared.daemon import stop_on_signals
from mushishi.shared.journal import log_extra
from mushishi.shared.notify import Notifier
from mushishi.shared.processes import child_environment, terminate

log = logging.getLogger("mushishi.tenant")

HEALTH_INTERVAL_S = 0.25
HEALTH_REQUEST_TIMEOUT_S = 2.0


async def health_answer(session: aiohttp.ClientSession, url: str) -> str | None:
    """None when `url` answers 2xx, else a short description of what it said."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(
                total=HEALTH_REQUEST_TIMEOUT_S), allow_redirects=False) as response:
            if 200 <= response.status < 300:
                return None
            return f"HTTP {response.status}"
    except (aiohttp.ClientError, TimeoutError) as error:
        return str(error) or type(error).__name__


async def run_tenant(name: str, tenant: TenantSettings, notifier: Notifier, *,
                     clock: Callable[[], float] = time.monotonic) -> int:
    """Run until the command exits (its status) or systemd stops us (0)."""
    extra = log_extra(backend=name)
    # Let the tenant's own start_timeout_s rule, not the unit's TimeoutStartSec=.
    notifier.notify(f"EXTEND_TIMEOUT_USEC={int((tenant.start_timeout_s + 30) * 1_000_000)}")
    try:
        child = await asyncio.create_subprocess_exec(
            *tenant.command, env=child_environment(dict(os.environ)))
    except OSError as error:
        line = (f"tenant {name}: cannot run {tenant.command[0]}: {error.strerror or error} "
                f"(check tenants.{name}.command)")
        log.error("%s", line, extra=extra)
        notifier.status(line)
        return 1
    stop = stop_on_signals()
    exited = asyncio.create_task(child.wait())
    stopping = asyncio.create_task(stop.wait())
    started = clock()
    async with aiohttp.ClientSession() as session:
        last = "not asked yet"
        while not (exited.done() or stopping.done()):
            answer = await health_answer(session, tenant.health_url)
            if answer is None:
                notifier.ready(f"serving: {tenant.health_url} answers")
                log.info("tenant %s ready after %.1f s", name, clock() - started, extra=extra)
                break
            if answer != last:
                notifier.status(f"waiting for {tenant.health_url}: {answer}")
                last = answer
            if clock() - started > tenant.start_timeout_s:
                line = (f"tenant {name}: {tenant.health_url} did not answer within "
                        f"start_timeout_s={tenant.start_timeout_s:.0f} s (last: {answer})")
                log.error("%s", line, extra=extra)
                notifier.status(line)
                await terminate(child, tenant.stop_timeout_s)
                return 1
            await asyncio.wait({exited, stopping}, timeout=HEALTH_INTERVAL_S)
    await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if exited.done() and not stopping.done():
        status = exited.result()
        stopping.cancel()
        line = f"tenant {name}: its command exited with status {status}"
        log.error("%s", line, extra=extra)
        notifier.status(line)
        return status if status and status > 0 else 1
    notifier.stopping(f"stopping {name}")
    status = await terminate(child, tenant.stop_timeout_s)
    log.info("tenant %s stopped (status %s)", name, status, extra=extra)
    return 0


