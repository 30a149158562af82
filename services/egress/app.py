"""Wiring of mushishi-egress: the Egress object, its socket, metrics and lifecycle.

Start: open the budget ledger (settling what a crash left behind), read the cloud API keys,
then serve on the socket systemd passed (LISTEN_FDS, from mushishi-egress.socket) or on
`router.egress_socket`, and send READY=1. SIGTERM drains requests in flight (up to
`egress.drain_timeout_s`) and settles every one of them; SIGHUP reloads keys, budgets,
prices, cooldown settings, profiles and the audit's retention. The ticker prunes audit rows
older than `egress.audit_retention_days`, a batch at a time, in the ledger's writer thread.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractResolver

from mushishi.services.egress.audit import AuditEntry, Finish, retention_cutoff
from mushishi.services.egress.core import Admission, Policy, Usage, compile_policy, utc_day
from mushishi.services.egress.http_api import Outcome, build_app
from mushishi.services.egress.ledger import (
    PRUNE_BATCH,
    Ledger,
    LedgerError,
    Reconciled,
    budget_view,
)
from mushishi.services.egress.metrics import EgressMetrics, EgressStateCollector
from mushishi.services.egress.providers import (
    Provider,
    build_providers,
    close_providers,
    read_key,
)
from mushishi.shared.activation import bind_unix, systemd_sockets
from mushishi.shared.config import LoadedConfig, MushishiSettings
from mushishi.shared.config.router import parse_listen, resolve_peer_uid
from mushishi.shared.credentials import read_credential
from mushishi.shared.daemon import EX_CONFIG, reload_on_sighup, run_fast, stop_on_signals
from mushishi.shared.metrics import new_registry, package_version, start_metrics_server
from mushishi.shared.notify import Notifier
from mushishi.shared.serving import serve_until_stopped

log = logging.getLogger("mushishi.egress")

LEDGER_RETRY_S = 1.0  # between tries to open a ledger whose disk was full at start
PRUNE_EVERY = timedelta(hours=1)  # between prunes of the audit, unless a batch was full


class PeerError(ValueError):
    """egress.allowed_peers names a user that does not exist."""


def allowed_uids(settings: MushishiSettings) -> frozenset[int]:
    """The uids of egress.allowed_peers; PeerError names a user that does not exist."""
    uids = set()
    for index, peer in enumerate(settings.egress.allowed_peers):
        uid = resolve_peer_uid(peer)
        if uid is None:
            raise PeerError(f"egress.allowed_peers[{index}]: no such user {peer!r} (run "
                            "`mushishi install`, which creates the mushishi user, or name the "
                            "router's user or uid)")
        uids.add(uid)
    return frozenset(uids)


class Egress:
    """Everything a request needs, built once from the settings."""

    def __init__(
        self,
        settings: MushishiSettings,
        *,
        clock: Callable[[], datetime] | None = None,
        resolver: AbstractResolver | None = None,
        credential_reader: Callable[[str], str] = read_credential,
    ) -> None:
        self.settings = settings
        self.now = clock or (lambda: datetime.now(UTC))
        self.resolver = resolver
        self.credential_reader = credential_reader
        self.policy: Policy = compile_policy(settings)
        self.allowed_uids = allowed_uids(settings)
        self.registry = new_registry("egress")
        self.metrics = EgressMetrics(self.registry)
        self.ledger = Ledger(settings.egress.state_dir, self._prices(), self.now)
        self.providers: dict[str, Provider] = {}
        self.draining = False
        self.in_flight = 0
        self._day = utc_day(self.now())
        self._next_prune: datetime | None = None  # None: at the first tick
        self._pruning = False
        self._ledger_opening = asyncio.Lock()
        self._ledger_tried = 0.0  # time.monotonic() of the last try to open the ledger
        self._ledger_retry: asyncio.Task[bool] | None = None
        self.registry.register(EgressStateCollector(lambda: self))

    def _prices(self) -> dict[str, Any]:
        return {name: backend.price for name, backend in self.policy.cloud.items()}

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Open the ledger (settling a crashed run's reservations) and the providers."""
        reconciled = await asyncio.to_thread(self.ledger.open)
        self.providers = build_providers(self.policy.cloud, self.resolver,
                                         self.credential_reader)
        if self.ledger.unavailable is not None:
            log.error("%s (tried again every %gs)", self.ledger.unavailable, LEDGER_RETRY_S)
            self._ledger_tried = time.monotonic()
            return
        self._ledger_opened(reconciled)

    def _ledger_opened(self, reconciled: list[Reconciled]) -> None:
        """Count what a crashed run left in flight; restore the stored cooldowns."""
        for item in reconciled:
            log.warning("request %s to %s was in flight when mushishi-egress stopped without "
                        "settling it: counted as 1 request, %d+%d tokens (estimated) on %s",
                        item.request_id, item.backend, item.usage.prompt_tokens,
                        item.usage.completion_tokens, item.day,
                        extra={"MUSHISHI_BACKEND": item.backend})
            self.count_usage(item.backend, item.usage, None)
        for name, provider in self.providers.items():
            stored = self.ledger.cooldown(name)
            if stored is not None:
                provider.breaker.restore(*stored)
                log.info("cloud backend %s is cooling down until %s (%s), as before the "
                         "restart", name, stored[0].isoformat(timespec="seconds"), stored[1],
                         extra={"MUSHISHI_BACKEND": name})

    async def ledger_ready(self) -> bool:
        """Whether the ledger can record a request; one that could not be opened (its disk
        full) is tried again, at most every LEDGER_RETRY_S."""
        if self.ledger.unavailable is None:
            return True
        async with self._ledger_opening:
            if self.ledger.unavailable is None:
                return True
            if time.monotonic() - self._ledger_tried < LEDGER_RETRY_S:
                return False
            reconciled = await asyncio.to_thread(self.ledger.retry_open)
            self._ledger_tried = time.monotonic()
            if self.ledger.unavailable is not None:
                return False
        log.warning("the budget ledger %s can be written again: cloud requests are sent again",
                    self.ledger.path)
        self._ledger_opened(reconciled)
        return True

    async def close(self) -> None:
        """Flush the ledger and close every session."""
        if self._ledger_retry is not None:
            self._ledger_retry.cancel()
        await close_providers(self.providers)
        await self.ledger.close()

    # -- per request --------------------------------------------------------------------
    def count_usage(self, backend: str, usage: Usage, cost: float | None) -> None:
        """Metrics of a settled request."""
        metrics = self.metrics
        if usage.prompt_tokens:
            metrics.child(metrics.tokens, backend, "prompt").inc(usage.prompt_tokens)
        if usage.completion_tokens:
            metrics.child(metrics.tokens, backend, "completion").inc(usage.completion_tokens)
        if cost:
            metrics.child(metrics.cost, backend).inc(cost)
        if usage.estimated:
            metrics.child(metrics.estimated, backend).inc()

    def cooled(self, backend: str, until: datetime, reason: str, kind: str) -> None:
        """A provider starts cooling down: stored (a restart keeps it), counted, logged."""
        self.ledger.set_cooldown(backend, until, reason)
        self.metrics.child(self.metrics.cooldowns, backend, kind).inc()
        log.warning("cloud backend %s is cooling down until %s: %s", backend,
                    until.isoformat(timespec="seconds"), reason,
                    extra={"MUSHISHI_BACKEND": backend})

    def recovered(self, backend: str) -> None:
        """A provider answered: forget a stored cooldown."""
        if self.ledger.cooldown(backend) is not None:
            self.ledger.clear_cooldown(backend)
            log.info("cloud backend %s answers again", backend,
                     extra={"MUSHISHI_BACKEND": backend})

    def finish(self, request: web.Request, admission: Admission, outcome: Outcome,
               elapsed: float) -> None:
        """Metrics and the journal record of a finished request (never any prompt text)."""
        backend = admission.backend.name
        self.metrics.child(self.metrics.requests, admission.profile, backend,
                           outcome.outcome).inc()
        usage = outcome.usage
        fields = {
            "MUSHISHI_OUTCOME": outcome.outcome,
            "MUSHISHI_STATUS": str(outcome.status),
            "MUSHISHI_STREAM": "1" if outcome.stream else "0",
            "MUSHISHI_DURATION_MS": f"{elapsed * 1000:.1f}",
        }
        text = (f"{request.path.removeprefix('/v1/')} {admission.profile} -> {backend}: "
                f"{outcome.status} {outcome.outcome} in {elapsed * 1000:.1f} ms")
        if usage is not None:
            fields["MUSHISHI_PROMPT_TOKENS"] = str(usage.prompt_tokens)
            fields["MUSHISHI_COMPLETION_TOKENS"] = str(usage.completion_tokens)
            text += (f", {usage.prompt_tokens}+{usage.completion_tokens} tokens"
                     + (" (estimated)" if usage.estimated else ""))
            if admission.backend.price is not None:
                fields["MUSHISHI_COST"] = f"{outcome.cost:.6f}"
                text += f", cost {outcome.cost:.6f}"
        if outcome.message:
            text += f" ({outcome.message})"
        level = logging.INFO if outcome.outcome in ("success", "client_error") \
            else logging.WARNING
        if log.isEnabledFor(level):
            log.handle(log.makeRecord(log.name, level, __file__, _FINISH_LINE, text, None, None,
                                      "finish", fields))

    async def record_refused(self, entry: AuditEntry, finish: Finish) -> None:
        """The audit row of a request refused before anything was sent, on disk before the
        refusal is answered (a ledger that cannot write is logged, never fatal)."""
        try:
            await asyncio.shield(self.ledger.record(dataclasses.replace(entry, finish=finish)))
        except LedgerError as error:
            log.error("the audit row of refused request %s is not on disk: %s",
                      entry.request_id, error)

    def prune_audit(self) -> asyncio.Future[int] | None:
        """Queue one batch of deletions of audit rows past egress.audit_retention_days (the
        writer thread runs it between requests' commits); None when one is running."""
        if self._pruning:
            return None
        now = self.now()
        cutoff = retention_cutoff(now, self.settings.egress.audit_retention_days)
        try:
            future: asyncio.Future[int] = self.ledger.prune_audit(cutoff)
        except LedgerError:
            return None
        self._pruning = True

        def pruned(done: asyncio.Future[int]) -> None:
            self._pruning = False
            deleted = done.result() if not done.cancelled() and done.exception() is None \
                else 0
            if deleted:
                log.info("pruned %d audit row(s) older than %s (egress.audit_retention_days "
                         "= %d)", deleted, cutoff.isoformat(timespec="seconds"),
                         self.settings.egress.audit_retention_days)
            # A full batch: more are due, at the next tick; else in an hour.
            self._next_prune = now if deleted >= PRUNE_BATCH else now + PRUNE_EVERY
        future.add_done_callback(pruned)
        return future

    # -- what the egress says about itself ----------------------------------------------
    def budgets(self, now: datetime | None = None) -> dict[str, dict[str, Any]]:
        """Per cloud backend: today's budget, as read_budgets() shows it."""
        now = now or self.now()
        day = utc_day(now)
        return {name: budget_view(backend, self.ledger.totals(name, day),
                                  self.ledger.in_flight(name), day,
                                  self._cooldown(name), now)
                for name, backend in sorted(self.policy.cloud.items())}

    def _cooldown(self, name: str) -> tuple[datetime, str] | None:
        provider = self.providers.get(name)
        if provider is None or provider.breaker.until is None:
            return None
        return provider.breaker.until, provider.breaker.reason

    def status(self) -> dict[str, Any]:
        """GET /status on the egress socket."""
        budgets = self.budgets()
        for name, view in budgets.items():
            provider = self.providers.get(name)
            view["credential"] = provider is not None and provider.key is not None
            view["consecutive_failures"] = provider.breaker.failures if provider else 0
            view["url"] = self.policy.cloud[name].url
            view["model"] = self.policy.cloud[name].model
        return {"version": package_version(), "draining": self.draining,
                "in_flight": self.in_flight, "backends": budgets}

    def status_line(self) -> str:
        """The STATUS= line shown by `systemctl status`."""
        now = self.now()
        parts = []
        for name, view in self.budgets(now).items():
            provider = self.providers.get(name)
            if provider is not None and provider.key is None:
                parts.append(f"{name} no key")
            elif view["cooldown_until"]:
                parts.append(f"{name} cooling down")
            elif view["requests_limit"] is not None:
                parts.append(f"{name} {view['requests_used']}/{view['requests_limit']} req")
            else:
                parts.append(f"{name} {view['requests_used']} req")
        if self.ledger.unavailable is not None:
            parts.insert(0, f"budget ledger {self.ledger.path} cannot be written: cloud "
                            "requests refused")
        state = "draining" if self.draining else "serving"
        return (f"{state} {len(self.policy.cloud)} cloud backend(s): "
                f"{', '.join(parts) or 'none configured'}; {self.in_flight} in flight")

    def tick(self) -> None:
        """Periodic upkeep: drop yesterday's in-memory totals after midnight UTC; prune the
        audit when due."""
        now = self.now()
        day = utc_day(now)
        if day != self._day:
            self._day = day
            self.ledger.forget_day(day)
            log.info("a new UTC day (%s): cloud budgets start again", day)
        if self.ledger.unavailable is not None and self._ledger_retry is None:
            self._ledger_retry = asyncio.create_task(self.ledger_ready())
            self._ledger_retry.add_done_callback(self._ledger_retried)
        if self._next_prune is None or now >= self._next_prune:
            self.prune_audit()

    def _ledger_retried(self, task: asyncio.Task[bool]) -> None:
        self._ledger_retry = None
        if not task.cancelled() and task.exception() is not None:
            log.error("the budget ledger %s could not be opened: %s", self.ledger.path,
                      task.exception())

    def reload(self, settings: MushishiSettings) -> list[str]:
        """Apply a new config: profiles, budgets, prices, cooldowns, keys and the audit's
        retention now; name what needs a restart (a backend's URL, model or timeouts, the
        peers, the state dir)."""
        fresh = compile_policy(settings)
        pending = []
        if settings.egress.state_dir != self.settings.egress.state_dir:
            pending.append("egress.state_dir")
        if settings.egress.allowed_peers != self.settings.egress.allowed_peers:
            pending.append("egress.allowed_peers")
        for name, backend in fresh.cloud.items():
            provider = self.providers.get(name)
            if provider is None:
                pending.append(f"backends.{name} (new)")
                continue
            old = provider.backend
            if (old.base, old.connect_timeout_s) != (backend.base, backend.connect_timeout_s):
                pending.append(f"backends.{name}.url/connect_timeout_s")
                continue
            provider.backend = backend
            provider.breaker.after = backend.cooldown_after_failures
            provider.breaker.cooldown_s = backend.cooldown_s
            provider.key, provider.key_problem = read_key(backend, self.credential_reader)
            if provider.key is None:
                log.error("cloud backend %s is disabled: %s", name, provider.key_problem,
                          extra={"MUSHISHI_BACKEND": name})
        cloud = {name: backend for name, backend in fresh.cloud.items()
                 if name in self.providers}
        self.policy = Policy(fresh.profiles, cloud, fresh.local)
        self.ledger.prices = self._prices()
        self.settings = settings
        return pending


_FINISH_LINE = Egress.finish.__code__.co_firstlineno


async def serve(egress: Egress, sockets: list[socket.socket], notifier: Notifier,
                stop: asyncio.Event, origin: str = "bound here") -> None:
    """Serve on `sockets` until `stop` is set, then drain and close."""

    def serving() -> None:
        log.info("serving %d cloud backend(s) on %s (%s)", len(egress.policy.cloud),
                 ", ".join(str(s.getsockname()) for s in sockets), origin)

    await serve_until_stopped(egress, build_app(egress), sockets, notifier, stop,
                              drain_s=egress.settings.egress.drain_timeout_s, logger=log,
                              serving=serving, tick=egress.tick)


async def run_egress(loaded: LoadedConfig, notifier: Notifier, *,
                     resolver: AbstractResolver | None = None) -> int:
    """The daemon: open the ledger, read the keys, serve, drain. `resolver` replaces the
    system's DNS (tests, with a fixed table of names)."""
    settings = loaded.settings
    try:
        egress = Egress(settings, resolver=resolver)
    except PeerError as error:
        log.error("invalid config %s: %s", loaded.path, error)
        notifier.status(str(error))
        return EX_CONFIG
    try:
        await egress.start()
    except LedgerError as error:
        log.error("%s", error)
        notifier.status(f"cannot start: {error}")
        await egress.close()
        return 1
    host, port = parse_listen(settings.egress.metrics_listen)
    try:
        metrics = await start_metrics_server(egress.registry, str(host), int(port))
    except OSError as error:
        log.error("cannot serve metrics on %s (%s): check egress.metrics_listen",
                  settings.egress.metrics_listen, error.strerror or error)
        await egress.close()
        return 1
    sockets = systemd_sockets()
    origin = "socket from systemd" if sockets is not None else "bound here"
    if sockets is None:
        try:
            sockets = [bind_unix(settings.router.egress_socket, what="router.egress_socket")]
        except OSError as error:
            log.error("%s", error.strerror or error)
            await metrics.cleanup()
            await egress.close()
            return 1
    stop = stop_on_signals()

    def apply(fresh: MushishiSettings) -> None:
        pending = egress.reload(fresh)
        log.info("reloaded profiles, budgets, prices, cooldowns, API keys and the audit's "
                 "retention from %s",
                 loaded.path)
        if pending:
            log.warning("changes to %s take effect on `systemctl restart mushishi-egress` "
                        "(socket-activated: no request is refused)", ", ".join(pending))

    reload_on_sighup(loaded, notifier, log, apply, egress.status_line)
    try:
        await serve(egress, sockets, notifier, stop, origin)
    finally:
        await metrics.cleanup()
    return 0


def main_body(args: argparse.Namespace, loaded: LoadedConfig, notifier: Notifier) -> int:
    """run_daemon's body: the event loop (uvloop when installed)."""
    return run_fast(run_egress(loaded, notifier))
