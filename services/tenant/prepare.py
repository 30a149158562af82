"""`mushishi-tenant prepare MODE` (mushishi-gpu-prepare@MODE.service, root, oneshot).

Runs in the mode's own isolate transaction after the old mode's tenants have stopped and
before the new mode's tenants start, so `systemctl isolate` and `mushishi mode` get the
same treatment: the mode's GPU power limit is set, and when the mode's tenants need more
VRAM than is free, the stop-list's containers and processes are stopped. Anything not in
the stop-list is reported and left alone.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Sequence

from mushishi.services.tenant.docker_api import Container, DockerEngine
from mushishi.services.tenant.stoplist import plan_freeing, process_matches, signal_process
from mushishi.shared.bus import connect
from mushishi.shared.config import MushishiSettings
from mushishi.shared.config.gpu import tenant_unit
from mushishi.shared.gpu import GpuProbe, GpuProbeError
from mushishi.shared.journal import log_extra
from mushishi.shared.notify import Notifier
from mushishi.shared.systemd import SystemdClient

log = logging.getLogger("mushishi.tenant")


async def running_tenants(tenants: Sequence[str]) -> set[str]:
    """Tenants whose units are already active (they hold their memory already)."""
    if not tenants:
        return set()
    bus = await connect()
    try:
        statuses = await SystemdClient(bus).statuses([tenant_unit(t) for t in tenants])
    finally:
        bus.disconnect()
    return {t for t in tenants
            if statuses.get(tenant_unit(t)) and statuses[tenant_unit(t)].active_state
            in ("active", "reloading", "activating")}


def prepare(settings: MushishiSettings, mode: str, probe_factory: Callable[[], GpuProbe],
            notifier: Notifier, *, docker: DockerEngine | None = None,
            running: set[str] | None = None,
            clock: Callable[[], float] = time.monotonic,
            sleep: Callable[[float], None] = time.sleep) -> int:
    """0 when the GPU is ready for `mode` (or as ready as the stop-list allows)."""
    extra = log_extra(mode=mode)
    config = settings.modes[mode]
    try:
        probe = probe_factory()
    except GpuProbeError as error:
        log.error("mode %s: cannot prepare the GPU: %s", mode, error, extra=extra)
        notifier.status(str(error))
        return 1
    try:
        failed = False
        if config.power_limit_w is not None:
            try:
                probe.set_power_limit(config.power_limit_w)
                log.info("mode %s: GPU power limit set to %d W", mode, config.power_limit_w,
                         extra=extra)
            except GpuProbeError as error:
                log.error("mode %s: cannot set the GPU power limit (modes.%s.power_limit_w): "
                          "%s", mode, mode, error, extra=extra)
                notifier.status(f"power limit not set: {error}")
                failed = True
        if running is None:
            running = asyncio.run(running_tenants(config.tenants))
        starting = [t for t in config.tenants if t not in running]
        need = sum(settings.tenants[t].vram_mib for t in starting)
        if need:
            free_memory(settings, mode, need, probe,
                        docker or DockerEngine(settings.gpu.docker_host), clock, sleep)
        return 1 if failed else 0
    except GpuProbeError as error:
        log.error("mode %s: cannot read the GPU: %s", mode, error, extra=extra)
        notifier.status(f"cannot read the GPU: {error}")
        return 1
    finally:
        probe.close()


def free_memory(settings: MushishiSettings, mode: str, need: int, probe: GpuProbe,
                docker: DockerEngine, clock: Callable[[], float],
                sleep: Callable[[float], None]) -> None:
    """Stop stop-list holders when free VRAM is short of `need`, then wait for it."""
    extra = log_extra(mode=mode)
    snapshot = probe.read()
    if snapshot.free_mib >= need:
        log.info("mode %s needs %d MiB, %d MiB free", mode, need, snapshot.free_mib, extra=extra)
        return
    stop_list = settings.gpu.stop_list
    containers: list[Container] = []
    if stop_list:
        try:
            containers = docker.running()
        except Exception as error:
            log.warning("mode %s: Docker at %s unreachable (%s); no container will be stopped",
                        mode, settings.gpu.docker_host, error, extra=extra)
    plan = plan_freeing(snapshot, stop_list, containers)
    log.warning("mode %s needs %d MiB, %d MiB free; GPU memory held by: %s", mode, need,
                snapshot.free_mib, "; ".join(plan.report) or "nothing reported", extra=extra)
    if not plan.processes and not plan.containers:
        log.warning("mode %s: nothing in [gpu] stop_list holds GPU memory; nothing stopped",
                    mode, extra=extra)
        return
    for container in plan.containers:
        try:
            docker.stop([container.id])
            log.warning("mode %s: stopped container %s (%s) from the stop-list", mode,
                        container.name, container.id[:12], extra=extra)
        except Exception as error:
            log.error("mode %s: stopping container %s failed: %s", mode, container.name, error,
                      extra=extra)
    terminated = []
    for process in plan.processes:
        if not process_matches(process.pid, process.name):
            log.warning("mode %s: pid %d no longer runs %s; left alone", mode, process.pid,
                        process.name, extra=extra)
            continue
        if signal_process(process.pid, signal.SIGTERM):
            terminated.append(process)
            log.warning("mode %s: sent SIGTERM to %s (pid %d, %d MiB) from the stop-list",
                        mode, process.name, process.pid, process.used_mib, extra=extra)
    wait = settings.gpu.free_wait_s
    deadline = clock() + wait
    killed = False
    while True:
        snapshot = probe.read()
        if snapshot.free_mib >= need:
            log.info("mode %s: %d MiB free now", mode, snapshot.free_mib, extra=extra)
            return
        if clock() >= deadline:
            log.error("mode %s: still only %d MiB free of the %d MiB needed after %.0f s",
                      mode, snapshot.free_mib, need, wait, extra=extra)
            return
        if not killed and clock() >= deadline - wait / 2:
            killed = True
            live = {p.pid for p in snapshot.processes}
            for process in terminated:
                if process.pid in live and process_matches(process.pid, process.name):
                    signal_process(process.pid, signal.SIGKILL)
                    log.warning("mode %s: %s (pid %d) ignored SIGTERM; killed", mode,
                                process.name, process.pid, extra=extra)
        sleep(0.2)
