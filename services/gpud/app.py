"""mushishi-gpud wiring: the pure core, systemd's D-Bus API, the probes and the GPU.

Every switch, whether it came through SwitchMode or a bare `systemctl isolate`, is read
back from systemd the same way: a start job on a mode target means a switch is under way;
once no job is left on the mode units, `core.settle` says what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import time
from collections.abc import Callable, Mapping

import aiohttp
from dbus_fast.aio import MessageBus

from mushishi.services.gpud import core
from mushishi.services.gpud.core import SwitchError
from mushishi.services.gpud.dbus_api import GpuModeInterface, export
from mushishi.services.gpud.metrics import GpudMetrics
from mushishi.shared import bus as dbus
from mushishi.shared.bus import BusError, NameOwnerWatch
from mushishi.shared.busy_probes import busy_lines, mean_utilisation, read_probe
from mushishi.shared.config import LoadedConfig, MushishiSettings
from mushishi.shared.config.gpu import mode_target, tenant_unit
from mushishi.shared.config.router import parse_tcp_listen
from mushishi.shared.daemon import EX_UNAVAILABLE, load_or_explain, stop_on_signals
from mushishi.shared.gpu import GpuProbe, GpuProbeError, GpuSnapshot, open_probe
from mushishi.shared.journal import log_extra
from mushishi.shared.metrics import new_registry, start_metrics_server
from mushishi.shared.notify import Notifier
from mushishi.shared.systemd import JobEvent, SystemdClient, UnitChange
from mushishi.shared.tasks import cancel_and_wait

log = logging.getLogger("mushishi.gpud")


def modes_of(settings: MushishiSettings) -> dict[str, list[str]]:
    """Mode name -> its tenants."""
    return {name: list(mode.tenants) for name, mode in settings.modes.items()}


class GpuModeManager:
    """One GPU mode at a time, over systemd targets; what io.mushishi.GpuMode1 exposes."""

    def __init__(self, settings: MushishiSettings, probe: GpuProbe, metrics: GpudMetrics, *,
                 notifier: Notifier | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 new_cookie: Callable[[], int] = lambda: secrets.randbelow(2**32 - 1) + 1,
                 ) -> None:
        self.settings = settings
        self.modes: dict[str, list[str]] = modes_of(settings)
        self.probe = probe
        self.metrics = metrics
        self.notifier = notifier or Notifier({})
        self.clock = clock
        self.new_cookie = new_cookie
        self.mode_state = core.ModeState()
        self.snapshot = GpuSnapshot(total_mib=0, used_mib=0)
        self.progress = ""
        self.interface: GpuModeInterface | None = None
        self.systemd: SystemdClient | None = None
        self.bus: MessageBus | None = None
        self.session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()
        self._dirty = asyncio.Event()
        self._target_results: dict[str, str] = {}
        self._switch_started: float | None = None
        self._last_job_removed: float | None = None
        self._owner_watches: dict[str, NameOwnerWatch | None] = {}
        self._gpu_error: str | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def mode_names(self) -> list[str]:
        """Modes in the config, sorted."""
        return sorted(self.modes)

    @property
    def units(self) -> list[str]:
        """The units that make up the modes."""
        return core.watched_units(self.modes)

    async def start(self, bus: MessageBus) -> None:
        """Read systemd and the GPU, then export the interface and own the bus name."""
        self.bus = bus
        self.session = aiohttp.ClientSession()
        self.systemd = SystemdClient(bus)
        await self.systemd.watch(self.units, self._on_job, self._on_change)
        await self._reconcile()
        await self._read_gpu()
        await self.export()
        self._tasks = [asyncio.create_task(self._reconciler(), name="reconciler"),
                       asyncio.create_task(self._poll_gpu(), name="gpu-poller")]
        self._show_status()
        log.info("gpud ready: mode %s, state %s", self.mode_state.active_mode or "none",
                 self.mode_state.state, extra=log_extra(mode=self.mode_state.active_mode))

    async def export(self) -> None:
        """Export io.mushishi.GpuMode1 showing the current state, then own its bus name."""
        assert self.bus is not None
        self.interface = GpuModeInterface(self)
        await export(self.bus, self.interface)

    async def close(self) -> None:
        """Stop background work and release what was opened."""
        await cancel_and_wait(*self._tasks)
        for watch in self._owner_watches.values():
            if watch is not None:
                watch.cancel()
        self._owner_watches.clear()
        if self.session is not None:
            await self.session.close()
        await asyncio.to_thread(self.probe.close)

    def reload(self, settings: MushishiSettings) -> None:
        """Adopt a new config (SIGHUP): modes, tenants, probes."""
        self.settings = settings
        self.modes = modes_of(settings)
        self.metrics.modes = sorted(self.modes)
        if self.systemd is not None:
            self.systemd.rewatch(self.units)
        self._publish()
        self.request_reconcile()
        log.info("config reloaded: modes %s", ", ".join(self.mode_names))

    # -- state changes ---------------------------------------------------------------------
    def _publish(self) -> None:
        """PropertiesChanged for whatever changed (nothing before the interface exists)."""
        if self.interface is not None:
            self.interface.publish()

    def _set_state(self, new: core.ModeState) -> None:
        old = self.mode_state
        self.mode_state = new
        self.metrics.show_mode(new.active_mode, new.state)
        self.metrics.holds.set(len(new.holds))
        self._publish()
        if (old.active_mode, old.state, old.reason, old.holds, old.last_switch_reason) != (
                new.active_mode, new.state, new.reason, new.holds, new.last_switch_reason):
            self._show_status()

    def _set_progress(self, text: str) -> None:
        if text != self.progress:
            self.progress = text
            self._publish()
            if text:
                self.notifier.status(text)

    def _show_status(self) -> None:
        state = self.mode_state
        text = f"mode {state.active_mode or 'none'}: {state.state}"
        if state.reason:
            text += f" ({state.reason})"
        if state.holds:
            text += f", {len(state.holds)} hold(s)"
        if state.last_switch_reason:
            text += f"; last switch: {state.last_switch_reason}"
        self.notifier.status(text)

    # -- systemd signals -------------------------------------------------------------------
    def _on_job(self, event: JobEvent) -> None:
        if event.result is not None:
            self._last_job_removed = self.clock()
            if event.unit.endswith(".target"):
                self._target_results[event.unit] = event.result
        self.request_reconcile()

    def _on_change(self, change: UnitChange) -> None:
        if "ActiveState" in change.changed or "StatusText" in change.changed:
            self.request_reconcile()

    def request_reconcile(self) -> None:
        """Look at systemd again soon (coalesced)."""
        self._dirty.set()

    async def _reconciler(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._reconcile()
            except BusError as error:
                log.warning("reading systemd failed: %s", error.text)
            except Exception:
                # The reconciler is how every switch ends: it must outlive any one bug.
                log.exception("reconciling with systemd failed")

    async def _reconcile(self) -> None:
        assert self.systemd is not None
        async with self._lock:
            pending = await self.systemd.pending_jobs(self.units)
            if pending:
                await self._note_pending(pending)
                return
            statuses = await self.systemd.statuses(self.units)
            seen = core.Observation(statuses, dict(self._target_results))
            was = self.mode_state
            new, events = core.settle(was, seen, self.modes)
            self._target_results.clear()
            self._set_state(new)
            self._set_progress("")
            self._emit(was, events)

    async def _note_pending(self, pending: Mapping[str, str]) -> None:
        assert self.systemd is not None
        state = self.mode_state
        starting = sorted(mode for mode in self.modes
                          if pending.get(mode_target(mode)) == "start")
        if starting and (state.state != core.SWITCHING or state.target not in starting):
            mode = starting[0]
            log.info("switch to %s started by systemd (systemctl isolate or start)", mode,
                     extra=log_extra(mode=mode))
            self._switch_started = self.clock()
            self._set_state(core.begin_switch(state, mode, "systemd"))
        statuses = await self.systemd.statuses(pending)
        waiting = [status for unit, status in sorted(statuses.items()) if unit in pending]
        self._set_progress(core.describe_progress(self.mode_state.target, waiting))

    def _emit(self, was: core.ModeState, events: list[core.Event]) -> None:
        origin = was.origin or "systemd"
        elapsed = None if self._switch_started is None else self.clock() - self._switch_started
        for event in events:
            if isinstance(event, core.ModeChanged):
                if self.interface is not None:
                    self.interface.mode_changed(event.old, event.new)
                if was.target is not None:
                    self.metrics.switches.labels(result="ok", origin=origin).inc()
                    if elapsed is not None:
                        self.metrics.switch_seconds.labels(result="ok").observe(elapsed)
                if self._last_job_removed is not None:
                    self.metrics.phase_seconds.labels(phase="settle_to_signal").observe(
                        self.clock() - self._last_job_removed)
                log.info("mode %s -> %s", event.old or "none", event.new or "none",
                         extra=log_extra(mode=event.new))
            elif isinstance(event, core.SwitchFailed):
                self.metrics.switches.labels(result="failed", origin=origin).inc()
                if elapsed is not None:
                    self.metrics.switch_seconds.labels(result="failed").observe(elapsed)
                log.error("mode %s failed: %s", event.mode, event.reason,
                          extra=log_extra(mode=event.mode))
            else:
                for hold in event.holds:
                    log.warning("hold %d on %s by %s ended: %s", hold.cookie, hold.mode,
                                hold.holder, event.why, extra=log_extra(mode=hold.mode))
        if events:
            self._switch_started = None

    # -- SwitchMode and Busy -----------------------------------------------------------------
    async def switch(self, mode: str, force: bool, why: str = core.MANUAL
                     ) -> core.Refusal | None:
        """Refuse, or start a switch (for `why`: LastSwitchReason) and return once systemd
        has queued the isolate job."""
        assert self.systemd is not None
        started = self.clock()
        async with self._lock:
            refusal = core.check_switch(self.mode_state, mode, self.modes, force)
            if refusal is None and core.is_noop(self.mode_state, mode):
                log.info("already in mode %s", mode, extra=log_extra(mode=mode))
                return None
            if refusal is None and not force:
                leaving = core.leaving_tenants(self.modes, await self._running_tenants(), mode)
                refusal = core.busy_refusal(await self._busy_lines(leaving))
            if refusal is not None:
                self.metrics.refusals.labels(reason=refusal.kind).inc()
                log.warning("switch to %s refused: %s", mode, refusal.message,
                            extra=log_extra(mode=mode))
                return refusal
            self._switch_started = started
            self._target_results.clear()
            self._set_state(core.begin_switch(self.mode_state, mode, "api", why))
            target = mode_target(mode)
            log.info("switching %s -> %s (%s)%s", self.mode_state.active_mode or "none", mode,
                     why, " (forced: in-flight work drains first)" if force else "",
                     extra=log_extra(mode=mode))
            try:
                await self.systemd.isolate(target)
            except BusError as error:
                reason = f"systemd refused to isolate {target}: {error.text}"
                self._set_state(core.ModeState(
                    self.mode_state.active_mode, core.FAILED, reason,
                    holds=self.mode_state.holds, last_switch_reason=why))
                self.metrics.switches.labels(result="failed", origin="api").inc()
                log.error("%s", reason, extra=log_extra(mode=mode))
                raise SwitchError(reason) from None
            self.metrics.phase_seconds.labels(phase="call_to_isolate").observe(
                self.clock() - started)
        self.request_reconcile()
        return None

    async def busy(self) -> list[str]:
        """Busy() for every running tenant."""
        return await self._busy_lines(await self._running_tenants())

    async def _running_tenants(self) -> list[str]:
        assert self.systemd is not None
        tenants = sorted({t for ts in self.modes.values() for t in ts})
        statuses = await self.systemd.statuses([tenant_unit(t) for t in tenants])
        return [t for t in tenants
                if statuses.get(tenant_unit(t), core.UnitStatus("")).active_state
                in ("active", "reloading")]

    async def _busy_lines(self, tenants: list[str]) -> list[str]:
        if not tenants:
            return []
        assert self.session is not None
        gpu = self.settings.gpu
        readings = await asyncio.gather(*(
            read_probe(self.session, tenant, self.settings.tenants[tenant].busy_probe,
                       gpu.probe_timeout_s)
            for tenant in tenants))
        unprobed = [tenant for tenant, reading in zip(tenants, readings, strict=True)
                    if reading is None]
        utilisation = None
        if unprobed:
            try:
                utilisation = await mean_utilisation(self._read_utilisation, gpu.util_sample_s)
            except GpuProbeError as error:
                return [f"{', '.join(unprobed)}: no busy probe and the GPU is unreadable "
                        f"({error})"]
        return busy_lines([r for r in readings if r is not None], unprobed, utilisation,
                          gpu.busy_util_percent)

    async def _read_utilisation(self) -> int:
        return (await asyncio.to_thread(self.probe.read)).util_percent

    # -- holds -----------------------------------------------------------------------------
    async def hold(self, mode: str, holder: str, reason: str, owner: str) -> int | core.Refusal:
        """HoldMode: the cookie, or why not."""
        async with self._lock:
            cookie = self.new_cookie()
            while any(h.cookie == cookie for h in self.mode_state.holds):
                cookie = self.new_cookie()
            result = core.add_hold(self.mode_state,
                                   core.Hold(cookie, mode, holder or owner, reason, owner),
                                   self.modes)
            if isinstance(result, core.Refusal):
                self.metrics.refusals.labels(reason=result.kind).inc()
                return result
            self._set_state(result)
        log.info("%s holds %s (cookie %d)%s", holder or owner, mode, cookie,
                 f": {reason}" if reason else "", extra=log_extra(mode=mode))
        await self._watch_owner(owner)
        return cookie

    async def release(self, cookie: int, caller: str) -> core.Refusal | None:
        """ReleaseHold by the hold's owner (or root)."""
        assert self.bus is not None
        is_root = False
        with contextlib.suppress(BusError):
            is_root = await dbus.caller_uid(self.bus, caller) == 0
        result = core.release_hold(self.mode_state, cookie, caller, caller_is_root=is_root)
        if isinstance(result, core.Refusal):
            return result
        self._set_state(result)
        log.info("hold %d released", cookie)
        return None

    async def _watch_owner(self, owner: str) -> None:
        """End the owner's holds when its connection leaves the bus."""
        assert self.bus is not None
        if owner in self._owner_watches:
            return
        self._owner_watches[owner] = None  # being set up: a second hold need not wait
        try:
            watch = await dbus.watch_name_owner(
                self.bus, owner, lambda now: None if now else self._owner_gone(owner))
        except BaseException:
            self._owner_watches.pop(owner, None)
            raise
        self._owner_watches[owner] = watch
        if not watch.owner:
            self._owner_gone(owner)

    def _owner_gone(self, owner: str) -> None:
        watch = self._owner_watches.pop(owner, None)
        if watch is not None:
            watch.cancel()
        new, gone = core.drop_owner(self.mode_state, owner)
        if gone:
            self._set_state(new)
            for hold in gone:
                log.info("hold %d on %s by %s released: its holder left the bus", hold.cookie,
                         hold.mode, hold.holder, extra=log_extra(mode=hold.mode))

    # -- the GPU ---------------------------------------------------------------------------
    async def _poll_gpu(self) -> None:
        while True:
            await asyncio.sleep(self.settings.gpu.poll_interval_s)
            try:
                await self._read_gpu()
            except Exception:
                log.exception("reading the GPU failed unexpectedly")

    async def _read_gpu(self) -> None:
        try:
            snapshot = await asyncio.to_thread(self.probe.read)
        except GpuProbeError as error:
            self.metrics.probe_errors.inc()
            if str(error) != self._gpu_error:
                log.error("reading the GPU failed: %s", error)
                self._gpu_error = str(error)
            return
        if self._gpu_error is not None:
            log.info("the GPU reads again")
            self._gpu_error = None
        self.snapshot = snapshot
        self.metrics.show_gpu(snapshot)
        self._publish()


async def serve(loaded: LoadedConfig, notifier: Notifier,
                bus_factory: Callable[[], MessageBus] | None = None) -> int:
    """Run gpud until SIGTERM."""
    settings = loaded.settings
    try:
        probe = await asyncio.to_thread(open_probe, settings.gpu)
        await asyncio.to_thread(probe.read)
    except GpuProbeError as error:
        log.error("mushishi-gpud cannot read the GPU: %s", error)
        notifier.status(f"cannot read the GPU: {error}")
        return EX_UNAVAILABLE
    registry = new_registry("gpud")
    manager = GpuModeManager(settings, probe, GpudMetrics(registry, settings.modes),
                             notifier=notifier)
    try:
        bus = await (bus_factory().connect() if bus_factory is not None else dbus.connect())
    except (OSError, ValueError) as error:
        log.error("mushishi-gpud cannot reach the system bus: %s", error)
        return EX_UNAVAILABLE
    host, port = parse_tcp_listen(settings.gpu.metrics_listen)  # validated with the config
    try:
        metrics_runner = await start_metrics_server(registry, host, port)
    except (OSError, ValueError) as error:
        log.error("cannot serve /metrics on gpu.metrics_listen=%s: %s",
                  settings.gpu.metrics_listen, error)
        bus.disconnect()
        return EX_UNAVAILABLE
    stop = stop_on_signals()

    def reload() -> None:
        again = load_or_explain(str(loaded.path))
        if again is None:
            log.error("config reload refused: %s is invalid; keeping the running config",
                      loaded.path)
            return
        manager.reload(again.settings)

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
    try:
        try:
            await manager.start(bus)
        except RuntimeError as error:  # the bus name is taken
            log.error("%s", error)
            return EX_UNAVAILABLE
        except BusError as error:
            log.error("systemd's D-Bus API refused gpud: %s (%s)", error.text, error.name)
            return EX_UNAVAILABLE
        await stop.wait()
        notifier.stopping("stopping")
    finally:
        await manager.close()
        await metrics_runner.cleanup()
        bus.disconnect()
    return 0
