"""Wiring of mushishi-router: the Router object, its listeners, and the daemon lifecycle.

Start: compile the route table, open the backend sessions, follow gpud on the bus, start
the health probes, check the kernel confinement, then serve on the sockets systemd passed
(LISTEN_FDS) or on `router.listen`, and send READY=1. SIGTERM drains requests in flight
(up to `router.drain_timeout_s`); SIGHUP reloads keys and unix peers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from mushishi.services.router.cloud_share import CloudShare, load_state, save_state
from mushishi.services.router.confinement import Confinement, check_kernel_confinement
from mushishi.services.router.core import (
    ErrorCode,
    GpuView,
    Hop,
    RouteProfile,
    compile_table,
    preview,
)
from mushishi.services.router.dispatch import Call, Rejection
from mushishi.services.router.gpu_mode import GpuModeFollower
from mushishi.services.router.health import HealthProber
from mushishi.services.router.http_api import build_app
from mushishi.services.router.metrics import RouterMetrics, RouterStateCollector
from mushishi.services.router.state import Board
from mushishi.services.router.traces import RequestTracer
from mushishi.services.router.upstream import CONNECT_CHECK_TEST_ENV, Upstreams
from mushishi.shared.activation import bind_unix, systemd_sockets
from mushishi.shared.bus import BusError
from mushishi.shared.config import LoadedConfig, MushishiSettings
from mushishi.shared.config.router import parse_listen, resolve_peer_uid
from mushishi.shared.daemon import EX_CONFIG, reload_on_sighup, run_fast, stop_on_signals
from mushishi.shared.metrics import new_registry, package_version
from mushishi.shared.notify import Notifier
from mushishi.shared.serving import serve_until_stopped

log = logging.getLogger("mushishi.router")

SAVE_EVERY_S = 60.0
_FINISH_LINE = 0  # CODE_LINE of the per-request record (set below, after Router is defined)


def _mark(value: bool | None) -> str:
    return "✓" if value else ("?" if value is None else "✗")


class Router:
    """Everything a request needs, built once from the settings."""

    def __init__(
        self,
        settings: MushishiSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        bus_address: str | None = None,
        follow_gpu: bool = True,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        environ = os.environ if environ is None else environ
        self.settings = settings
        self.clock = clock
        self.table = compile_table(settings, resolve_peer_uid)
        self.board = Board(dict(self.table.backends), clock)
        self.connect_check = environ.get(CONNECT_CHECK_TEST_ENV) != "1"
        self.registry = new_registry("router")
        self.metrics = RouterMetrics(self.registry)
        self.cloud_share = CloudShare(wall_clock)
        self.state_path = Path(settings.router.state_dir) / "cloud-share.json"
        self._save_warned = False
        self.upstreams = Upstreams(
            self.table.backends,
            {name: backend.url for name, backend in settings.backends.items()},
            {name: backend.health_url for name, backend in settings.backends.items()},
            settings.router,
            connect_check=self.connect_check,
            on_refusal=self._refused,
        )
        self.prober = HealthProber(self.board, self.upstreams, settings.router.probe_interval_s,
                                   settings.router.probe_timeout_s, clock)
        self.gpu = GpuModeFollower(self._gpu_changed, bus_address=bus_address) \
            if follow_gpu else None
        self.confinement = Confinement(None, "not checked yet")
        self.draining = False
        self.in_flight = 0
        self._switches: dict[str, asyncio.Task[None]] = {}
        self._headers: dict[tuple[str, str], dict[str, str]] = {}
        self.board.on_change.append(self._health_changed)
        self.registry.register(RouterStateCollector(lambda: self))
        self.tracer = RequestTracer.from_settings(settings.traces, package_version(),
                                                  settings.router.local_networks)

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self, *, check_confinement: bool = True) -> None:
        """Follow gpud, start the probes, check the kernel confinement."""
        if not self.connect_check:
            log.warning("%s=1: the connect-time sovereignty check is OFF. This setting exists "
                        "only for tests that prove the kernel layer; never use it on a box.",
                        CONNECT_CHECK_TEST_ENV)
        if self.gpu is not None:
            self.gpu.start()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self.gpu.connected.wait()
        self.prober.start()
        try:
            restored = load_state(self.cloud_share, self.state_path)
        except (OSError, ValueError) as error:
            log.warning("cloud share not restored from %s (%s): counting from zero",
                        self.state_path, error)
        else:
            if restored:
                log.info("cloud share of the last day restored from %s", self.state_path)
        if check_confinement:
            self.confinement = check_kernel_confinement(self.settings.router.confinement_probe)
            level = logging.INFO if self.confinement.kernel else logging.WARNING
            log.log(level, "kernel confinement: %s", self.confinement.detail)

    async def close(self) -> None:
        """Stop background work and close every session."""
        for task in self._switches.values():
            task.cancel()
        await self.prober.close()
        if self.gpu is not None:
            await self.gpu.close()
        await self.upstreams.close()
        if self.tracer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.tracer.shutdown)
            self.tracer = None

    # -- callbacks ----------------------------------------------------------------------
    def _refused(self, address: str) -> None:
        log.warning("connect-time check refused %s: outside router.local_networks", address)

    def _gpu_changed(self, view: GpuView) -> None:
        self.board.set_gpu(view)
        self.prober.kick()

    def _health_changed(self, name: str, old: Any, new: Any, reason: str) -> None:
        level = logging.INFO if new.value in ("up", "starting") else logging.WARNING
        log.log(level, "backend %s: %s -> %s (%s)", name, old.value, new.value, reason,
                extra={"MUSHISHI_BACKEND": name})

    def save_state(self) -> None:
        """Persist the cloud share (warned about once if the state directory is unwritable)."""
        try:
            save_state(self.cloud_share, self.state_path)
        except OSError as error:
            if not self._save_warned:
                log.warning("cannot save the cloud share to %s (%s); check router.state_dir",
                            self.state_path, error)
                self._save_warned = True

    def prober_kick(self, name: str) -> None:
        """Probe a backend now (after a request saw it fail)."""
        self.prober.kick(name)

    async def request_switch(self, profile: RouteProfile, wait_s: float) -> None:
        """Ask gpud for the profile's mode when the GPU is idle (one request per mode)."""
        mode = profile.require_mode
        assert mode is not None and self.gpu is not None
        task = self._switches.get(mode)
        if task is None or task.done():
            task = self._switches[mode] = asyncio.create_task(self._switch(mode, wait_s))
        try:
            await asyncio.shield(task)
        except BusError as error:
            raise Rejection(ErrorCode.MODE_MISMATCH, (
                f"profile {profile.name!r} requires GPU mode {mode!r}; gpud refused to switch: "
                f"{error.text or error.name}")) from None
        except TimeoutError:
            raise Rejection(ErrorCode.MODE_MISMATCH, (
                f"profile {profile.name!r} requires GPU mode {mode!r}; the switch did not "
                f"finish in {wait_s:g}s")) from None
        except Exception as error:  # the bus went away mid-call, or any D-Bus failure
            log.warning("asking gpud for mode %s failed: %s", mode, error)
            raise Rejection(ErrorCode.MODE_MISMATCH, (
                f"profile {profile.name!r} requires GPU mode {mode!r}; asking gpud failed: "
                f"{error}")) from None

    async def _switch(self, mode: str, wait_s: float) -> None:
        assert self.gpu is not None
        reasons = await self.gpu.busy()
        if reasons:
            raise BusError("io.mushishi.GpuMode1.Error.Busy",
                               "the GPU is busy: " + "; ".join(reasons))
        log.info("asking gpud to switch to %s (on_mode_mismatch = switch)", mode,
                 extra={"MUSHISHI_MODE": mode})
        await self.gpu.switch_mode(mode, wait_s)

    # -- per request --------------------------------------------------------------------
    def upstream_headers(self, call: Call, hop: Hop) -> dict[str, str]:
        """Headers sent to the hop: never the caller's credentials."""
        key = (call.profile.name, hop.name)
        base = self._headers.get(key)
        if base is None:
            base = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
            if not hop.local:
                base.update({"X-Mushishi-Profile": call.profile.name,
                             "X-Mushishi-Tier": call.profile.tier,
                             "X-Mushishi-Backend": hop.name})
            self._headers[key] = base
        return {**base, "X-Request-Id": call.request_id}

    def response_headers(self, call: Call, backend: str) -> dict[str, str]:
        """X-Mushishi-* headers of the answer."""
        headers = {"X-Mushishi-Profile": call.profile.name, "X-Mushishi-Tier": call.profile.tier,
                   "X-Mushishi-Backend": backend, "X-Request-Id": call.request_id}
        if call.fallbacks:
            headers["X-Mushishi-Fallbacks"] = str(call.fallbacks)
        return headers

    def finish(self, call: Call, message: str | None = None) -> None:
        """Metrics and the journal record of a finished call (never any prompt text)."""
        metrics = self.metrics
        outcome = call.outcome or "unknown"
        profile = call.profile.name
        metrics.child(metrics.requests, profile, call.backend, outcome).inc()
        now = time.perf_counter()
        elapsed = now - call.started
        if call.backend != "none":
            metrics.child(metrics.duration, profile, call.backend).observe(elapsed)
            if call.first_byte is not None:
                metrics.child(metrics.first_byte, profile, call.backend).observe(
                    call.first_byte - call.started)
            metrics.overhead.observe(max(call.overhead, 0.0))
            if call.prompt_tokens:
                metrics.child(metrics.tokens, profile, call.backend, "prompt").inc(
                    call.prompt_tokens)
            if call.completion_tokens:
                metrics.child(metrics.tokens, profile, call.backend, "completion").inc(
                    call.completion_tokens)
            if outcome == "success":
                self.cloud_share.record(profile, not self.table.backends[call.backend].local)
        fields = {
            "MUSHISHI_BACKEND": call.backend,
            "MUSHISHI_MODE": self.board.gpu.active_mode or "unknown",
            "MUSHISHI_OUTCOME": outcome,
            "MUSHISHI_STATUS": str(call.status),
            "MUSHISHI_API": call.api,
            "MUSHISHI_STREAM": "1" if call.stream else "0",
            "MUSHISHI_DURATION_MS": f"{elapsed * 1000:.1f}",
            "MUSHISHI_OVERHEAD_MS": f"{call.overhead * 1000:.3f}",
            "MUSHISHI_FALLBACKS": str(call.fallbacks),
        }
        text = (f"{call.path.lstrip('/')} {profile} -> {call.backend}: {call.status} {outcome} "
                f"in {elapsed * 1000:.1f} ms")
        if call.fallbacks:
            text += f" after {call.fallbacks} fallback(s)"
        if message:
            text += f" ({message})"
        if self.tracer is not None:
            self.tracer.record(call, elapsed_s=elapsed, gpu_mode=self.board.gpu.active_mode)
        level = logging.INFO if outcome in ("success", "client_error") else logging.WARNING
        if log.isEnabledFor(level):
            # One record per request: built directly, skipping logging's stack walk for the
            # caller (findCaller), which would only find this line anyway.
            log.handle(log.makeRecord(log.name, level, __file__, _FINISH_LINE, text, None, None,
                                      "finish", fields))

    def reject(self, request: web.Request, rejection: Rejection, request_id: str | None) -> None:
        """Count and log a request refused before it reached a profile."""
        self.metrics.child(self.metrics.requests, "none", "none", rejection.code.value).inc()
        log.info("%s %s refused: %s (%s)", request.method, request.path, rejection.code.value,
                 rejection.message, extra={"MUSHISHI_OUTCOME": rejection.code.value,
                                           "MUSHISHI_REQUEST_ID": request_id or ""})

    # -- what the router says about itself ----------------------------------------------
    def sovereignty_layers(self) -> dict[str, bool | None]:
        """config (always: it refuses to start otherwise), connect-time, kernel."""
        return {"config": True, "connect_time": self.connect_check,
                "kernel": self.confinement.kernel}

    def sovereignty(self) -> dict[str, Any]:
        """The `sovereignty` object of /status and /ready."""
        layers = self.sovereignty_layers()
        summary = (f"config {_mark(layers['config'])}, connect-time "
                   f"{_mark(layers['connect_time'])}, kernel {_mark(layers['kernel'])}")
        detail = self.confinement.detail
        if not self.connect_check:
            detail = f"connect-time check disabled by {CONNECT_CHECK_TEST_ENV} (tests only); " \
                     + detail
        return {**layers, "detail": detail, "summary": summary}

    def _previews(self) -> dict[str, Any]:
        verdicts = {name: self.board.verdict(name) for name in self.table.backends}
        return {name: preview(profile, verdicts, self.board.gpu,
                              lambda backend: self.board.backends[backend].slots.full)
                for name, profile in self.table.profiles.items()}

    def readiness(self) -> dict[str, Any]:
        """GET /ready: ready when not draining and at least one profile has a backend now."""
        previews = self._previews()
        servable = sorted(name for name, p in previews.items() if p.would_use is not None)
        return {"ready": bool(servable) and not self.draining, "draining": self.draining,
                "servable_profiles": servable, "sovereignty": self.sovereignty()}

    def status(self) -> dict[str, Any]:
        """GET /status: the contract read by the watchdog, `mushishi status` and `route`."""
        previews = self._previews()
        backends = {}
        for name, state in self.board.backends.items():
            verdict = self.board.verdict(name)
            hop = state.hop
            backends[name] = {
                "state": verdict.state, "reason": verdict.reason, "local": hop.local,
                "locality": hop.locality,
                "modes": sorted(hop.modes) if hop.modes is not None else None,
                "in_flight": state.slots.in_flight, "queued": state.slots.queued,
                "max_concurrency": hop.max_concurrency, "model": hop.model,
            }
        profiles = {}
        for name, profile in self.table.profiles.items():
            view = previews[name]
            profiles[name] = {
                "tier": profile.tier, "chain": [hop.name for hop in profile.hops],
                "would_use": view.would_use, "reason": view.reason,
                "queued": self.board.waiting.get(name, 0),
                "require_mode": profile.require_mode,
            }
        gpu = self.board.gpu
        return {
            "version": package_version(),
            "draining": self.draining,
            "in_flight": self.in_flight,
            "sovereignty": self.sovereignty(),
            "gpu": {"present": gpu.present, "active_mode": gpu.active_mode, "state": gpu.state},
            "backends": backends,
            "profiles": profiles,
            "cloud_share": {name: self.cloud_share.share(name).as_json()
                            for name in self.table.profiles},
        }

    def status_line(self) -> str:
        """The STATUS= line shown by `systemctl status`."""
        gpu = self.board.gpu
        mode = f"GPU mode {gpu.active_mode} ({gpu.state})" if gpu.present else "gpud absent"
        state = "draining" if self.draining else "serving"
        return (f"{state} {len(self.table.profiles)} profiles; sovereignty: "
                f"{self.sovereignty()['summary']}; {mode}; {self.in_flight} in flight")

    def reload_access(self, settings: MushishiSettings) -> list[str]:
        """Apply a new config's keys and unix peers now; name what needs a restart."""
        fresh = compile_table(settings, resolve_peer_uid)
        self.table = type(self.table)(profiles=self.table.profiles,
                                      backends=self.table.backends,
                                      keys=fresh.keys, peers=fresh.peers)
        needs_restart = []
        for section in ("router", "backends", "profiles"):
            if getattr(settings, section) != getattr(self.settings, section):
                needs_restart.append(section)
        return needs_restart


_FINISH_LINE = Router.finish.__code__.co_firstlineno


# -- listeners ---------------------------------------------------------------------------

def bind_listen(addresses: list[str]) -> list[socket.socket]:
    """Listening sockets for `router.listen` when not socket-activated."""
    sockets = []
    for address in addresses:
        host, port = parse_listen(address)
        if host == "unix":
            sockets.append(bind_unix(str(port), what="router.listen"))
            continue
        family = socket.AF_INET6 if ":" in str(host) else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((str(host), int(port)))
        except OSError as error:
            sock.close()
            raise OSError(error.errno, f"cannot listen on {address} ({error.strerror}); "
                                       "check router.listen") from None
        sock.listen(1024)
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


def describe_socket(sock: socket.socket) -> str:
    """`127.0.0.1:4000` or `unix:/run/mushishi/router.sock`."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}"
    host = f"[{name[0]}]" if sock.family == socket.AF_INET6 else name[0]
    return f"{host}:{name[1]}"


async def serve(router: Router, sockets: list[socket.socket], notifier: Notifier,
                stop: asyncio.Event) -> None:
    """Serve on `sockets` until `stop` is set, then drain, save the cloud share and close."""
    saved = time.monotonic()

    def serving() -> None:
        log.info("serving on %s; sovereignty: %s",
                 ", ".join(describe_socket(s) for s in sockets), router.sovereignty()["summary"])

    def tick() -> None:
        nonlocal saved
        if time.monotonic() - saved >= SAVE_EVERY_S:
            router.save_state()  # a crash loses at most this much of the cloud share
            saved = time.monotonic()

    await serve_until_stopped(router, build_app(router), sockets, notifier, stop,
                              drain_s=router.settings.router.drain_timeout_s, logger=log,
                              serving=serving, tick=tick, closing=router.save_state)


async def run_router(loaded: LoadedConfig, notifier: Notifier) -> int:
    """The daemon: build, check, serve, drain."""
    settings = loaded.settings
    router = Router(settings)
    try:
        await router.start()
    except BaseException:
        await router.close()
        raise
    if settings.router.require_kernel_confinement and router.confinement.kernel is not True:
        log.error("router.require_kernel_confinement is set and the kernel confinement "
                  "self-check did not pass: %s", router.confinement.detail)
        notifier.status("refusing to start: kernel confinement not in force")
        await router.close()
        return EX_CONFIG
    sockets = systemd_sockets()
    if sockets is None:
        try:
            sockets = bind_listen(settings.router.listen)
        except OSError as error:
            log.error("%s", error.strerror or error)
            await router.close()
            return 1
    stop = stop_on_signals()

    def apply(fresh: MushishiSettings) -> None:
        pending = router.reload_access(fresh)
        log.info("reloaded API keys and unix peers from %s", loaded.path)
        if pending:
            log.warning("changes in [%s] take effect on `systemctl restart mushishi-router`"
                        " (socket-activated: no connection is dropped)", ", ".join(pending))

    reload_on_sighup(loaded, notifier, log, apply, router.status_line)
    await serve(router, sockets, notifier, stop)
    return 0


def main_body(args: argparse.Namespace, loaded: LoadedConfig, notifier: Notifier) -> int:
    """run_daemon's body: the event loop (uvloop when installed)."""
    return run_fast(run_router(loaded, notifier))
