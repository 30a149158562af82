"""`mushishi-tenant run NAME` (ExecStart=, Type=notify): the tenant's command in the
foreground, READY=1 only once its health URL answers 2xx AND a live probe from inside every
place it runs shows it confined, SIGTERM passed on at stop.

While it starts, the tenant is probed every second (its containers' networks checked with
it); a probe that reaches the outside, or a container on a forbidden network, stops it with
one line. Once ready it is probed every `[gpu] tenant_probe_interval_s`, and each result is
published for the router (mushishi.shared.tenant_confinement); a change is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from mushishi.services.tenant.confinement import (
    Check,
    ConfinementSettings,
    TenantConfinement,
    env_warnings,
)
from mushishi.services.tenant.docker_api import DockerEngine, DockerError
from mushishi.services.tenant.launch import plan_launch
from mushishi.shared.config.gpu import DOCKER_BRIDGE, TenantSettings
from mushishi.shared.confinement_probe import ProbeResult
from mushishi.shared.daemon import stop_on_signals
from mushishi.shared.journal import log_extra
from mushishi.shared.notify import Notifier
from mushishi.shared.processes import child_environment, terminate
from mushishi.shared.tenant_confinement import (
    RECORD_NAME,
    TENANTS_RUN_DIR,
    TenantRecord,
    write_record,
)

log = logging.getLogger("mushishi.tenant")

HEALTH_INTERVAL_S = 0.25
HEALTH_REQUEST_TIMEOUT_S = 2.0
STARTUP_PROBE_INTERVAL_S = 1.0


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


def record_directory(name: str, environ: dict[str, str] | os._Environ[str]) -> Path:
    """The unit's RuntimeDirectory= (systemd removes it when the tenant stops)."""
    given = environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return Path(given) if given else TENANTS_RUN_DIR / name


class Publisher:
    """Writes each probe's result where the router reads it, and logs what changed."""

    def __init__(self, name: str, runtime: str, settings: ConfinementSettings,
                 directory: Path, notifier: Notifier, *,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.runtime = runtime
        self.settings = settings
        self.directory = directory
        self.notifier = notifier
        self.wall_clock = wall_clock
        self.last: bool | str | None = "never"
        self.warned: set[str] = set()
        # Until the tenant is ready the runner's own lines (ready, refused) say it all.
        self.serving = False

    def publish(self, check: Check, warnings: dict[str, str]) -> bool:
        """Record `check`; log a change of verdict (True when it changed) and each container
        warning once."""
        result = check.result
        extra = log_extra(backend=self.name)
        for key, line in warnings.items():
            if key not in self.warned:
                self.warned.add(key)
                log.warning("%s", line, extra=extra)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_record(self.directory, TenantRecord(
                self.name, self.runtime, result.confined, result.detail, self.wall_clock(),
                self.settings.interval_s, self.settings.target))
        except OSError as error:
            log.error("tenant %s: cannot publish its confinement in %s: %s", self.name,
                      self.directory, error, extra=extra)
        if result.confined == self.last or not self.serving:
            self.last = result.confined
            return False
        self.last = result.confined
        if result.confined is True:
            log.info("tenant %s is confined: %s", self.name, result.detail, extra=extra)
        elif result.confined is False:
            log.error("tenant %s is NOT confined: %s", self.name, result.detail, extra=extra)
        else:
            log.warning("tenant %s: confinement not known: %s", self.name, result.detail,
                        extra=extra)
        return True

    def withdraw(self) -> None:
        """The tenant stopped: its record goes (systemd removes the directory too)."""
        with contextlib.suppress(OSError):
            (self.directory / RECORD_NAME).unlink()


async def run_tenant(name: str, tenant: TenantSettings, settings: ConfinementSettings,
                     notifier: Notifier, *, publisher: Publisher | None = None,
                     confinement: TenantConfinement | None = None,
                     clock: Callable[[], float] = time.monotonic) -> int:
    """Run until the command exits (its status), systemd stops us (0), or it is refused (1)."""
    extra = log_extra(backend=name)
    # Let the tenant's own start_timeout_s rule, not the unit's TimeoutStartSec=.
    notifier.notify(f"EXTEND_TIMEOUT_USEC={int((tenant.start_timeout_s + 30) * 1_000_000)}")
    launch = plan_launch(name, tenant, settings.docker_network)
    for warning in launch.warnings:
        log.warning("%s", warning, extra=extra)
    if launch.refusal is not None:
        return _refused(launch.refusal, notifier, extra)
    docker = DockerEngine(settings.docker_host)
    if tenant.runtime == "docker":
        try:
            await asyncio.to_thread(docker.ensure_network, settings.docker_network,
                                    settings.docker_subnet, DOCKER_BRIDGE)
        except DockerError as error:
            return _refused(f"tenant {name}: {error}", notifier, extra)
    publisher = publisher or Publisher(name, tenant.runtime, settings,
                                       record_directory(name, os.environ), notifier)
    confinement = confinement or TenantConfinement(name, tenant, settings, launch.env,
                                                   docker=docker)
    try:
        child = await asyncio.create_subprocess_exec(
            *launch.argv, env={**child_environment(dict(os.environ)), **launch.env})
    except OSError as error:
        return _refused(f"tenant {name}: cannot run {tenant.command[0]}: "
                        f"{error.strerror or error} (check tenants.{name}.command)",
                        notifier, extra)
    try:
        return await _supervise(name, tenant, settings, notifier, child, confinement,
                                publisher, docker, clock)
    finally:
        publisher.withdraw()


async def _supervise(name: str, tenant: TenantSettings, settings: ConfinementSettings,
                     notifier: Notifier, child: asyncio.subprocess.Process,
                     confinement: TenantConfinement, publisher: Publisher,
                     docker: DockerEngine, clock: Callable[[], float]) -> int:
    extra = log_extra(backend=name)
    stop = stop_on_signals()
    exited = asyncio.create_task(child.wait())
    stopping = asyncio.create_task(stop.wait())
    started = clock()

    async def checked() -> tuple[Check, bool]:
        check = await confinement.check()
        changed = publisher.publish(check, env_warnings(name, check.containers,
                                                        confinement.env))
        return check, changed

    async def refuse(line: str, check: Check) -> int:
        log.error("%s", line, extra=extra)
        notifier.status(line)
        if check.containers:
            with contextlib.suppress(DockerError):
                await asyncio.to_thread(docker.stop, [c.id for c in check.containers],
                                        int(tenant.stop_timeout_s))
        await terminate(child, tenant.stop_timeout_s)
        stopping.cancel()
        return 1

    async with aiohttp.ClientSession() as session:
        last, probed_at = "not asked yet", -STARTUP_PROBE_INTERVAL_S
        check = Check(ProbeResult(None, "not probed yet"))
        while not (exited.done() or stopping.done()):
            if clock() - probed_at >= STARTUP_PROBE_INTERVAL_S:
                (check, _), probed_at = await checked(), clock()
                if check.forbidden or check.result.confined is False:
                    return await refuse(check.forbidden or f"tenant {name} is not confined: "
                                        f"{check.result.detail}", check)
            answer = await health_answer(session, tenant.health_url)
            if answer is None:
                # Ready is decided on a probe taken now, with every container there.
                check, _ = await checked()
                if check.forbidden or check.result.confined is False:
                    return await refuse(check.forbidden or f"tenant {name} is not confined: "
                                        f"{check.result.detail}", check)
                if check.result.confined is True or not settings.require:
                    mark = "confined" if check.result.confined else "confinement not known"
                    notifier.ready(f"serving: {tenant.health_url} answers; {mark}: "
                                   f"{check.result.detail}")
                    publisher.serving = True
                    log.log(logging.INFO if check.result.confined else logging.WARNING,
                            "tenant %s ready after %.1f s; %s: %s", name, clock() - started,
                            mark, check.result.detail, extra=extra)
                    break
                answer = (f"confinement not known ({check.result.detail}) and "
                          "router.require_kernel_confinement is set")
            if answer != last:
                notifier.status(f"waiting for {tenant.health_url}: {answer}")
                last = answer
            if clock() - started > tenant.start_timeout_s:
                return await refuse(
                    f"tenant {name}: not ready within start_timeout_s="
                    f"{tenant.start_timeout_s:.0f} s (last: {answer})", check)
            await asyncio.wait({exited, stopping}, timeout=HEALTH_INTERVAL_S)
        while not (exited.done() or stopping.done()):
            await asyncio.wait({exited, stopping}, timeout=settings.interval_s)
            if not (exited.done() or stopping.done()):
                check, changed = await checked()
                if changed:
                    mark = {True: "confined", False: "NOT CONFINED", None: "confinement not "
                            "known"}[check.result.confined]
                    notifier.status(f"serving: {tenant.health_url} answers; {mark}: "
                                    f"{check.result.detail}")
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
    if tenant.runtime == "docker":
        # Containers run under dockerd, not in this unit: none may outlive the tenant.
        with contextlib.suppress(DockerError):
            left = await confinement.containers()
            await asyncio.to_thread(docker.stop, [c.id for c in left],
                                    int(tenant.stop_timeout_s))
    log.info("tenant %s stopped (status %s)", name, status, extra=extra)
    return 0


def _refused(line: str, notifier: Notifier, extra: dict[str, object]) -> int:
    log.error("%s", line, extra=extra)
    notifier.status(line)
    return 1
