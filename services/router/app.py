"""Wiring of mushishi-router: the Router object, its listeners, and the daemon lifecycle.

Start: compile the route table, open the backend pools, follow gpud on the bus, start the
health probes, check the kernel confinement, then serve on the sockets systemd passed
(LISTEN_FDS) or on `router.listen`, and send READY=1. SIGTERM drains requests in flight
(up to `router.drain_timeout_s`); SIGHUP reloads keys, unix peers and profiles as one new
route table (and `[modes]` switching), or refuses the whole reload (`reload`). What each
part does is in the package's docstring (services/router/__init__.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from mushishi.services.router.accounting import Accounting
from mushishi.services.router.cloud_share import CloudShare, load_state, save_state
from mushishi.services.router.comfyui import ImageStore
from mushishi.services.router.confinement import check_kernel_confinement
from mushishi.services.router.core import GpuView, Health, compile_table
from mushishi.services.router.gpu_mode import GpuModeFollower
from mushishi.services.router.health import HealthProber
from mushishi.services.router.http_api import Api, build_app
from mushishi.services.router.metrics import RouterMetrics, RouterStateCollector
from mushishi.services.router.mode_switch import ModeSwitcher, SwitchRefused
from mushishi.services.router.policy import Forwarding
from mushishi.services.router.relay import Relay
from mushishi.services.router.reload import ReloadStatus, needs_restart
from mushishi.services.router.state import RoutingState
from mushishi.services.router.status_view import Sovereignty, StatusView, Traffic
from mushishi.services.router.tenants import TenantsFollower
from mushishi.services.router.traces import RequestTracer
from mushishi.services.router.upload import keep_chunks_on_the_heap
from mushishi.services.router.upstream import SovereigntyRefusal, Upstreams
from mushishi.shared.activation import bind_unix, systemd_sockets
from mushishi.shared.bus import BusError
from mushishi.shared.cgroups import cgroup2_mount
from mushishi.shared.config import LoadedConfig, MushishiSettings
from mushishi.shared.config.router import parse_listen, resolve_peer_uid
from mushishi.shared.daemon import EX_CONFIG, reload_on_sighup, run_fast, stop_on_signals
from mushishi.shared.disabled_checks import CONNECT_CHECK_TEST_ENV
from mushishi.shared.metrics import new_registry, package_version
from mushishi.shared.notify import Notifier
from mushishi.shared.peers import PeerCredentials
from mushishi.shared.serving import serve_until_stopped
from mushishi.shared.t1_readers import reader_unit_of
from mushishi.shared.tenant_confinement import TENANTS_RUN_DIR, served_backends

log = logging.getLogger("mushishi.router")

SAVE_EVERY_S = 60.0


class Router:
    """The router's parts, built once from the settings and wired together."""

    def __init__(
        self,
        settings: MushishiSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        bus_address: str | None = None,
        follow_gpu: bool = True,
        environ: Mapping[str, str] | None = None,
        tenants_run_dir: Path = TENANTS_RUN_DIR,
        proc_root: Path = Path("/proc"),
    ) -> None:
        environ = os.environ if environ is None else environ
        router = settings.router
        self.settings = settings
        self._wall_clock = wall_clock
        self.reload_status = ReloadStatus()
        self.table = compile_table(settings, resolve_peer_uid)
        self.state = RoutingState(self.table.backends, clock)
        self.state.on_change.append(_log_health_change)
        self.sovereignty = Sovereignty(connect_check=environ.get(CONNECT_CHECK_TEST_ENV) != "1")
        self.traffic = Traffic()
        self.registry = new_registry("router")
        self.cloud_share = CloudShare(wall_clock)
        self._state_path = Path(router.state_dir) / "cloud-share.json"
        self._save_warned = False
        self._upstreams = Upstreams(
            self.table.backends,
            {name: backend.url for name, backend in settings.backends.items()},
            {name: backend.health_url for name, backend in settings.backends.items()},
            router,
            connect_check=self.sovereignty.connect_check,
            on_refusal=_log_refusal,
        )
        self._prober = HealthProber(self.state, self._upstreams, router.probe_interval_s,
                                    router.probe_timeout_s, clock)
        # gpud on the bus: the GPU mode routing follows, and switches asked for on request.
        self.gpu = GpuModeFollower(self._gpu_changed, bus_address=bus_address) \
            if follow_gpu else None
        self._switcher = ModeSwitcher(self._ask_gpud, self.state, settings.mode_switching,
                                      clock) if self.gpu is not None else None
        self.tracer = RequestTracer.from_settings(settings.traces, package_version(),
                                                  router.local_networks)
        self.accounting = Accounting(RouterMetrics(self.registry), self.cloud_share,
                                     self.tracer, self.table.backends,
                                     lambda: self.state.gpu.active_mode)
        self.tenants = TenantsFollower(self.sovereignty, self.state, served_backends(settings),
                                       tenants_run_dir, wall_clock)
        self.view = StatusView(self.table.profiles, self.state, self.cloud_share,
                               self.sovereignty, self.traffic, self.reload_status)
        self.registry.register(RouterStateCollector(self.view))
        images = ImageStore(clock)
        relay = Relay(self._upstreams, self.state, self.accounting, self._prober.kick, clock,
                      router.stream_idle_timeout_s, router.egress_socket, images)
        self.api = Api(Forwarding(self.state, relay, self.accounting, self._switcher, clock,
                                  self._prober.rejudge),
                       self.accounting, self.view, self.traffic, lambda: self.table,
                       router.max_body_bytes, self.registry, _reader_units(proc_root),
                       images, router.wait_feedback_s)

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self, *, check_confinement: bool = True) -> None:
        """Follow gpud, start the probes, check the kernel confinement."""
        if not self.sovereignty.connect_check:
            log.warning("%s=1: the connect-time sovereignty check is OFF. This setting exists "
                        "only for tests that prove the kernel layer; never use it on a box.",
                        CONNECT_CHECK_TEST_ENV)
        if self.gpu is not None:
            self.gpu.start()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self.gpu.connected.wait()
        self._prober.start()
        if self._switcher is not None:
            self._switcher.start()
        await self.tenants.refresh()
        self.tenants.start()
        try:
            restored = load_state(self.cloud_share, self._state_path)
        except (OSError, ValueError) as error:
            log.warning("cloud share not restored from %s (%s): counting from zero",
                        self._state_path, error)
        else:
            if restored:
                log.info("cloud share of the last day restored from %s", self._state_path)
        if check_confinement:
            confinement = check_kernel_confinement(self.settings.router.confinement_probe)
            self.sovereignty.confinement = confinement
            level = logging.INFO if confinement.kernel else logging.WARNING
            log.log(level, "kernel confinement: %s", confinement.detail)

    async def close(self) -> None:
        """Stop background work and close every connection."""
        if self._switcher is not None:
            self._switcher.close()
        await self._prober.close()
        await self.tenants.close()
        if self.gpu is not None:
            await self.gpu.close()
        await self._upstreams.close()
        if self.tracer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.tracer.shutdown)
            self.tracer = None

    def save_state(self) -> None:
        """Persist the cloud share (warned about once if the state directory is unwritable)."""
        try:
            save_state(self.cloud_share, self._state_path)
        except OSError as error:
            if not self._save_warned:
                log.warning("cannot save the cloud share to %s (%s); check router.state_dir",
                            self._state_path, error)
                self._save_warned = True

    def reload(self, settings: MushishiSettings, path: str) -> bool:
        """Apply a new config's keys, unix peers and profiles as one new route table, or
        refuse all of it (logged, and shown in /status) when it changes what only a restart
        can apply. True when applied."""
        pending = needs_restart(self.settings, settings)
        now = self._wall_clock()
        if pending:
            log.error("reload refused, keeping the running config: %s",
                      self.reload_status.refused(now, pending, path))
            return False
        try:
            table = compile_table(settings, resolve_peer_uid, running=self.table.backends)
        except ValueError as error:  # the config check refuses this first
            log.error("reload refused, keeping the running config: %s", error)
            return False
        # One assignment: a request reads the table once, so it runs entirely on the old
        # table or entirely on the new one.
        self.table = table
        self.view.profiles = table.profiles
        self.settings = settings
        if self._switcher is not None:
            self._switcher.reconfigure(settings.mode_switching)
        self.reload_status.applied(now)
        log.info("reloaded API keys, unix peers and profiles from %s", path)
        return True

    # -- what serve_until_stopped reads and sets (shared.serving.Drainable) ---------------
    @property
    def draining(self) -> bool:
        """True once the router stops accepting and drains."""
        return self.traffic.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.traffic.draining = value
        if value:
            self.state.stop_waiting()

    @property
    def in_flight(self) -> int:
        """Requests being routed now."""
        return self.traffic.in_flight

    def serving_on(self, sockets: list[socket.socket]) -> None:
        """The sockets the router serves on (systemd's or its own): no backend may be one."""
        for sock in sockets:
            if sock.family == socket.AF_UNIX and isinstance(sock.getsockname(), str):
                self._upstreams.refuse_own_socket(sock.getsockname())

    def status_line(self) -> str:
        """The STATUS= line shown by `systemctl status`."""
        return self.view.status_line()

    def status(self) -> dict[str, object]:
        """GET /status's answer."""
        return self.view.status()

    async def probe(self, backend: str) -> Health:
        """Probe a local backend now and record what it answered."""
        return await self._prober.probe(backend)

    # -- gpud ---------------------------------------------------------------------------
    def _gpu_changed(self, view: GpuView) -> None:
        self.state.set_gpu(view)
        self._prober.kick()

    async def _ask_gpud(self, mode: str, reason: str, wait_s: float) -> None:
        """SwitchModeWithReason on gpud; its refusal (busy, held, unknown mode …) as
        SwitchRefused."""
        assert self.gpu is not None
        try:
            await self.gpu.switch_mode(mode, reason, wait_s)
        except BusError as error:
            if error.no_owner:
                raise SwitchRefused("mushishi-gpud is not on the bus") from None
            raise SwitchRefused("gpud refused to switch: " + (error.text or error.name)
                                ) from None


def _reader_units(proc: Path) -> Callable[[PeerCredentials], str | None]:
    """Which unit reading T1 prompts a unix peer runs in (shared.t1_readers)."""
    try:
        cgroup_root = cgroup2_mount((proc / "self" / "mounts").read_text()) \
            or Path("/sys/fs/cgroup")
    except OSError:
        cgroup_root = Path("/sys/fs/cgroup")
    own_uid = os.getuid()

    def reader_unit(peer: PeerCredentials) -> str | None:
        return reader_unit_of(peer.pid, peer.uid, own_uid=own_uid, proc=proc,
                              cgroup_root=cgroup_root)
    return reader_unit


def _log_refusal(refusal: SovereigntyRefusal) -> None:
    log.warning("%s", refusal.strerror)


def _log_health_change(name: str, old: Health, new: Health, reason: str) -> None:
    level = logging.INFO if new.value in ("up", "starting") else logging.WARNING
    log.log(level, "backend %s: %s -> %s (%s)", name, old.value, new.value, reason,
            extra={"MUSHISHI_BACKEND": name})


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
    router.serving_on(sockets)
    saved = time.monotonic()

    def serving() -> None:
        log.info("serving on %s; sovereignty: %s",
                 ", ".join(describe_socket(s) for s in sockets),
                 router.sovereignty.as_json()["summary"])

    def tick() -> None:
        nonlocal saved
        if time.monotonic() - saved >= SAVE_EVERY_S:
            router.save_state()  # a crash loses at most this much of the cloud share
            saved = time.monotonic()

    await serve_until_stopped(router, build_app(router.api), sockets, notifier, stop,
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
    confinement = router.sovereignty.confinement
    if settings.router.require_kernel_confinement and confinement.kernel is not True:
        log.error("router.require_kernel_confinement is set and the kernel confinement "
                  "self-check did not pass: %s", confinement.detail)
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
        router.reload(fresh, str(loaded.path))

    reload_on_sighup(loaded, notifier, log, apply, router.status_line)
    # What start-up built lives as long as the process: keep it out of the cyclic garbage
    # collector's full passes, which otherwise walk it all (50 ms under load, measured).
    gc.freeze()
    if keep_chunks_on_the_heap():
        log.debug("malloc keeps upload-sized pieces on its heap")
    await serve(router, sockets, notifier, stop)
    return 0


def main_body(args: argparse.Namespace, loaded: LoadedConfig, notifier: Notifier) -> int:
    """run_daemon's body: the event loop (uvloop when installed)."""
    return run_fast(run_router(loaded, notifier))
