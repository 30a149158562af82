"""The supervisor: pre-start checks, restart backoff, llama-server, readiness, watchdog pings.

One run of the unit supervises one llama-server. When the child exits, or stops answering,
the supervisor never restarts it in-process: it exits (or lets the systemd watchdog kill
it) and systemd restarts the whole unit, so the unit is `activating` again while the model
reloads and nothing ordered after it, nor the router, sees an "active" floor that cannot
answer. See docs/cpu-floor.md, "Restart policy".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import aiohttp

from mushishi.services.cpu_floor import child, core
from mushishi.services.cpu_floor.llama import LlamaClient, SmokeResult
from mushishi.services.cpu_floor.metrics import FloorMetrics
from mushishi.services.cpu_floor.preflight import describe_model, run_checks
from mushishi.services.cpu_floor.state import HistoryStore
from mushishi.shared.config.cpu_floor import CpuFloorSettings
from mushishi.shared.config.router import connect_url
from mushishi.shared.notify import Notifier
from mushishi.shared.processes import terminate

log = logging.getLogger("mushishi.cpu_floor")

CHILD_STOP_GRACE_S = 15.0  # below the unit's TimeoutStopSec=30
# While waiting or loading, the supervisor extends systemd's start timeout by this much at
# every status update; TimeoutStartSec= then only catches a supervisor that is stuck itself.
START_EXTENSION_S = 30.0
STATUS_EVERY_S = 1.0
POLL_FIRST_S = 0.05
POLL_MAX_S = 1.0


class Supervisor:
    """Runs one llama-server for the floor until it must stop; `run()` returns the exit
    status (0 after a requested stop)."""

    def __init__(
        self,
        settings: CpuFloorSettings,
        notifier: Notifier,
        metrics: FloorMetrics,
        store: HistoryStore,
        *,
        environ: Mapping[str, str],
        proc_root: Path = Path("/proc"),
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.notifier = notifier
        self.metrics = metrics
        self.store = store
        self.environ = environ
        self.proc_root = proc_root
        self.clock = clock
        self.wall = wall
        self._stopping = asyncio.Event()
        self.model_size = 0
        self.child_pid: int | None = None
        # What the health loop needs to know about the smoke loop.
        self._smoke_alive = False
        self._smoke_finished_at: float | None = None
        self._unhealthy_reason: str | None = None
        self._health_busy = False  # the latest /health timed out while llama-server worked
        self._serving_status = ""

    # -- public -------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the supervisor to stop llama-server and return (SIGTERM, SIGINT)."""
        if not self._stopping.is_set():
            log.info("stopping llama-server")
            self.notifier.stopping("stopping llama-server")
            self._stopping.set()

    async def run(self) -> int:
        """Check, wait out the backoff, start llama-server, supervise it."""
        history = self.store.load()
        self.metrics.load_restart_counts(history.counts)
        if not await self._backoff(history):
            return 0
        self.notifier.status("checking llama-server, the model, RAM and the port")
        checked = await run_checks(self.settings, self.proc_root)
        self.model_size = checked.model_size
        for warning in [*checked.warnings,
                        *core.timing_warnings(self.settings, self._watchdog_seconds())]:
            log.warning("%s", warning)
        if checked.refusal is not None:
            log.error("%s", checked.refusal.message)
            self.notifier.status(checked.refusal.message)
            return checked.refusal.exit_status
        connector = aiohttp.TCPConnector(limit=8, force_close=True)
        async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
            client = LlamaClient(
                session, connect_url(self.settings.host, self.settings.port), self.clock)
            argv = core.llama_server_argv(self.settings, checked.capabilities)
            log.info("starting %s", " ".join(argv))
            try:
                process = await child.spawn(argv, self.environ)
            except OSError as error:  # replaced or removed since the checks
                message = (f"cpu_floor.llama_server: cannot start {self.settings.llama_server}"
                           f": {error.strerror or error}")
                log.error("%s", message)
                self.notifier.status(message)
                return core.EXIT_CONFIG
            self.child_pid = process.pid
            try:
                return await self._supervise(process, client)
            finally:
                self.metrics.up.set(0)
                returncode = await terminate(process, CHILD_STOP_GRACE_S)
                log.info("llama-server %s", child.describe_exit(returncode))

    # -- phases -------------------------------------------------------------------------
    def _watchdog_seconds(self) -> float | None:
        usec = self.notifier.watchdog_usec
        return usec / 1_000_000 if usec else None

    def _extend_start(self, seconds: float = START_EXTENSION_S) -> None:
        self.notifier.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    async def _sleep_unless_stopping(self, seconds: float) -> bool:
        """Sleep; False when a stop was requested meanwhile."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(seconds, 0.0)):
                await self._stopping.wait()
        return not self._stopping.is_set()

    async def _backoff(self, history: core.History) -> bool:
        """Announce the previous unexpected stop and wait the restart delay; False if told
        to stop meanwhile."""
        streak = core.failure_streak(history.stops, self.settings.stable_after_s,
                                      self.wall())
        if streak == 0:
            return True
        last = history.stops[-1]
        explanation = core.STOP_EXPLANATIONS.get(last.reason, last.reason)
        total = sum(history.counts.values())
        log.warning("starting again after an unexpected stop (%s: %s); %d in a row, %d "
                    "restarts recorded", last.reason, explanation, streak, total)
        delay = core.restart_delay(streak, self.settings.restart_backoff_base_s,
                                   self.settings.restart_backoff_max_s)
        if delay <= 0:
            return True
        message = (f"waiting {delay:g} s before starting llama-server again: {streak} "
                   f"unexpected stops in a row, the last: {explanation}")
        log.warning("%s", message)
        self.notifier.status(message)
        end = self.clock() + delay
        while (remaining := end - self.clock()) > 0:
            self._extend_start(min(remaining, 5.0) + START_EXTENSION_S)
            if not await self._sleep_unless_stopping(min(remaining, 5.0)):
                return False
        return True

    async def _supervise(self, process: asyncio.subprocess.Process,
                         client: LlamaClient) -> int:
        started = self.clock()
        failure = await self._wait_until_serving(process, client, started)
        if failure is not None:
            return failure
        first = await client.smoke(self.settings.alias, self.settings.smoke_max_tokens,
                                   self.settings.smoke_timeout_s)
        self._record_smoke(first, core.SmokeVerdict.OK if first.answered
                           else core.SmokeVerdict.TIMEOUT if first.timed_out
                           else core.SmokeVerdict.ERROR)
        if self._stopping.is_set():
            return 0
        if not first.answered:
            message = (f"llama-server lists {self.settings.alias!r} but its first smoke "
                       f"completion failed: {first.error}")
            log.error("%s", message)
            self.notifier.status(message)
            return core.EXIT_TEMPFAIL
        load_s = self.clock() - started
        self.metrics.load_seconds.set(load_s)
        self.metrics.up.set(1)
        self.store.save(core.mark_ready(self.store.load(), self.wall()))
        speed = (f", {first.tokens_per_second:.0f} tokens/s"
                 if first.tokens_per_second else "")
        self._serving_status = (
            f"serving {self.settings.alias} on {self.settings.host}:{self.settings.port}: "
            f"{describe_model(self.settings.model, self.model_size)} loaded in {load_s:.1f} s;"
            f" smoke completion {first.seconds * 1000:.0f} ms{speed}")
        self.notifier.ready(self._serving_status)
        self.notifier.watchdog()
        log.info("%s", self._serving_status)
        return await self._monitor(process, client)

    async def _wait_until_serving(self, process: asyncio.subprocess.Process,
                                  client: LlamaClient, started: float) -> int | None:
        """Poll /health and /v1/models until the alias answers; an exit status if never."""
        settings = self.settings
        model = describe_model(settings.model, self.model_size)
        poll = POLL_FIRST_S
        next_status = started
        exited = asyncio.ensure_future(process.wait())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            while True:
                if exited.done():
                    message = (f"llama-server {child.describe_exit(process.returncode or 0)} "
                               f"while loading {model}; its own lines: journalctl -u "
                               "mushishi-cpu-floor -t llama-server")
                    log.error("%s", message)
                    self.notifier.status(message)
                    return core.EXIT_SOFTWARE
                if self._stopping.is_set():
                    return 0
                health = await client.health(settings.check_timeout_s)
                names = None
                if health.ok:
                    names = (await client.models(settings.check_timeout_s)).names
                readiness = core.assess_readiness(health.status, names, settings.alias)
                if readiness.phase is core.Phase.SERVING:
                    return None
                if readiness.phase is core.Phase.WRONG_ALIAS:
                    log.error("%s", readiness.detail)
                    self.notifier.status(readiness.detail)
                    return core.EXIT_CONFIG
                now = self.clock()
                if now - started > settings.load_timeout_s:
                    message = (f"llama-server did not serve {settings.alias!r} within "
                               f"cpu_floor.load_timeout_s ({settings.load_timeout_s:g} s): "
                               f"{readiness.detail}")
                    log.error("%s", message)
                    self.notifier.status(message)
                    return core.EXIT_TEMPFAIL
                if now >= next_status:
                    self.notifier.status(f"loading {model} as {settings.alias} on "
                                         f"{settings.host}:{settings.port}: "
                                         f"{now - started:.0f} s ({readiness.detail})")
                    self._extend_start()
                    next_status = now + STATUS_EVERY_S
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(poll):
                        await asyncio.wait([exited, stopping],
                                           return_when=asyncio.FIRST_COMPLETED)
                poll = min(poll * 1.5, POLL_MAX_S)
        finally:
            for task in (exited, stopping):
                task.cancel()
            await asyncio.gather(exited, stopping, return_exceptions=True)

    async def _monitor(self, process: asyncio.subprocess.Process, client: LlamaClient) -> int:
        """Health and smoke loops until llama-server exits or a stop is requested."""
        health = asyncio.create_task(self._health_loop(client), name="health")
        smoke = asyncio.create_task(self._smoke_loop(client), name="smoke")
        exited = asyncio.create_task(process.wait(), name="child")
        stopping = asyncio.create_task(self._stopping.wait(), name="stop")
        try:
            done, _ = await asyncio.wait({health, smoke, exited, stopping},
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (health, smoke, exited, stopping):
                task.cancel()
            await asyncio.gather(health, smoke, exited, stopping, return_exceptions=True)
        if self._stopping.is_set():
            return 0
        for task in done & {health, smoke}:
            task.result()  # a loop that ended on its own has a bug: let it propagate
        message = (f"llama-server {child.describe_exit(process.returncode or 0)} while "
                   "serving; systemd restarts the floor")
        log.error("%s", message)
        self.notifier.status(message)
        return core.EXIT_SOFTWARE

    # -- loops --------------------------------------------------------------------------
    async def _health_loop(self, client: LlamaClient) -> None:
        settings = self.settings
        watchdog_interval = self.notifier.watchdog_interval()
        period = core.check_period(settings.check_interval_s, watchdog_interval)
        sample = self._cpu_sample()
        while True:
            result = await client.health(settings.check_timeout_s)
            self.metrics.health_latency.observe(result.seconds)
            previous, sample = sample, self._cpu_sample()
            # /health starved by a saturated server that keeps decoding: busy, not wedged.
            busy = result.timed_out and core.working(previous, sample)
            outcome = ("ok" if result.ok else "busy" if busy else "timeout" if result.timed_out
                       else "unhealthy" if result.status is not None else "error")
            self.metrics.health_checks.labels(result=outcome).inc()
            if busy and not self._health_busy:
                log.warning("/health timed out after %g s, but llama-server is using CPU: "
                            "busy, not wedged; the watchdog is still pinged",
                            settings.check_timeout_s)
            self._health_busy = busy
            ping = core.should_ping_watchdog(
                now=self.clock(), health_ok=result.ok or busy, smoke_alive=self._smoke_alive,
                smoke_finished_at=self._smoke_finished_at,
                smoke_interval_s=settings.smoke_interval_s,
                smoke_timeout_s=settings.smoke_timeout_s, slack_s=2 * period)
            if ping:
                self.notifier.watchdog()
                self.metrics.up.set(1)
                if self._unhealthy_reason is not None:
                    log.warning("llama-server is healthy again (was: %s)",
                                self._unhealthy_reason)
                    self._unhealthy_reason = None
                    self.notifier.status(self._serving_status)
            else:
                self.metrics.up.set(0)
                reason = self._why_unhealthy(result.ok, result.status, result.error)
                if reason != self._unhealthy_reason:
                    self._unhealthy_reason = reason
                    line = (f"UNHEALTHY, watchdog not pinged: {reason}; systemd restarts the "
                            "floor unless it recovers within WatchdogSec=")
                    log.error("%s", line)
                    self.notifier.status(line)
            await asyncio.sleep(period)

    def _cpu_sample(self) -> core.CpuSample | None:
        """llama-server's state and CPU time now (None when it cannot be read)."""
        if self.child_pid is None:
            return None
        try:
            text = (self.proc_root / str(self.child_pid) / "stat").read_text("ascii", "replace")
        except OSError:
            return None
        return core.parse_proc_stat(text)

    def _why_unhealthy(self, health_ok: bool, status: int | None, error: str) -> str:
        if not health_ok:
            return (f"/health {error}" if status is None
                    else f"/health answered HTTP {status}")
        if not self._smoke_alive:
            return "the latest smoke completion failed"
        return "no smoke completion finished recently"

    async def _smoke_loop(self, client: LlamaClient) -> None:
        settings = self.settings
        while True:
            await asyncio.sleep(settings.smoke_interval_s)
            cpu_before = self._cpu_sample()
            before = await client.progress(settings.check_timeout_s)
            result = await client.smoke(settings.alias, settings.smoke_max_tokens,
                                        settings.smoke_timeout_s)
            # /metrics starved before the smoke: do not wait for it again (CPU time tells).
            after = (await client.progress(settings.check_timeout_s)
                     if result.timed_out and before is not None else None)
            verdict = core.judge_smoke(answered=result.answered, timed_out=result.timed_out,
                                       progress_before=before, progress_after=after,
                                       working=core.working(cpu_before, self._cpu_sample()))
            self._record_smoke(result, verdict)
            if verdict is core.SmokeVerdict.BUSY:
                log.warning("smoke completion timed out after %g s, but llama-server is "
                            "still producing tokens: busy, not wedged", settings.smoke_timeout_s)
            elif not verdict.alive:
                log.error("smoke completion failed (%s): %s", verdict.value, result.error)

    def _record_smoke(self, result: SmokeResult, verdict: core.SmokeVerdict) -> None:
        self.metrics.smoke_completions.labels(result=verdict.value).inc()
        if result.answered:
            self.metrics.smoke_latency.observe(result.seconds)
            if result.tokens_per_second is not None:
                self.metrics.smoke_tokens_per_second.set(result.tokens_per_second)
        self._smoke_alive = verdict.alive
        self._smoke_finished_at = self.clock()
