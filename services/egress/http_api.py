"""The egress's HTTP API on its unix socket (the router -> egress protocol, docs/egress.md).

Every request passes, in order: the peer check (SO_PEERCRED uid in egress.allowed_peers),
the sovereignty re-check (`core.admit`, from the egress's own config), the body, the
provider's key and cooldown, the day's budget, a reservation on disk, and only then the
provider. Errors are OpenAI-shaped with a stable code. Every API request leaves one audit
row (audit.py), on disk before its answer ends: refused ones with the refusal's code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from mushishi.services.egress.audit import REFUSED, AuditEntry, Finish, plain, sent_outcome
from mushishi.services.egress.core import (
    API_PATHS,
    FORM_PATHS,
    RAW_ANSWER_PATHS,
    Admission,
    Prepared,
    Refused,
    SseSplitter,
    StreamTally,
    Usage,
    admit,
    audio_seconds_from,
    budget_refusal,
    completion_text_bytes,
    estimate_tokens,
    parse_retry_after,
    prepare_body,
    read_event,
    usage_from,
)
from mushishi.services.egress.ledger import LedgerError, Reservation
from mushishi.shared.http_request import peer_uid, request_id_for
from mushishi.shared.journal import bind_fields
from mushishi.shared.log_safe import body_facts

if TYPE_CHECKING:
    from mushishi.services.egress.app import Egress
    from mushishi.services.egress.providers import Provider

log = logging.getLogger("mushishi.egress.request")

EGRESS_KEY = web.AppKey("mushishi_egress", object)
SSE = "text/event-stream"
CHECKPOINT_EVERY_S = 1.0
# 4xx answers that say the provider (its key, its model name) is at fault, not the request.
PROVIDER_FAULT_4XX = frozenset({401, 403, 404, 405, 408, 409, 425})
ERROR_TYPES = {400: "invalid_request_error", 403: "permission_error", 404: "not_found_error",
               413: "invalid_request_error", 429: "rate_limit_error"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _egress(request: web.Request) -> Egress:
    return request.app[EGRESS_KEY]  # type: ignore[return-value]


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> web.Response:
    """An OpenAI-shaped error with a stable code."""
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return web.Response(status=status, headers=headers, content_type="application/json",
                        body=json.dumps({"error": {"message": message, "type": kind,
                                                   "code": code}}).encode())


@web.middleware
async def peer_check(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Only the router's uid (egress.allowed_peers) may talk to the egress at all."""
    egress = _egress(request)
    uid = peer_uid(request)
    if uid is None or uid not in egress.allowed_uids:
        egress.metrics.peer_refusals.inc()
        who = "a peer that is not on a unix socket" if uid is None else f"uid {uid}"
        log.warning("refused %s %s from %s: not in egress.allowed_peers", request.method,
                    request.path, who)
        response = error_response(403, "peer_forbidden", f"{who} may not use "
                                                         "mushishi-egress (egress.allowed_peers)")
        if request.method == "POST" and request.path in API_PATHS:
            entry = audit_entry(egress, request, request_id_for(request), egress.now())
            await egress.record_refused(entry, Finish(REFUSED, "peer_forbidden", 403))
        return response
    return await handler(request)


def build_app(egress: Egress) -> web.Application:
    """The aiohttp application of the egress socket."""
    app = web.Application(middlewares=[peer_check],
                          client_max_size=egress.settings.router.max_body_bytes)
    app[EGRESS_KEY] = egress
    for path in API_PATHS:
        app.router.add_post(path, handle)
    app.router.add_get("/health", health)
    app.router.add_get("/status", status)
    return app


async def health(request: web.Request) -> web.Response:
    """Liveness."""
    return web.json_response({"status": "ok"})


async def status(request: web.Request) -> web.Response:
    """Budgets, cooldowns and credentials of every cloud backend."""
    return web.json_response(_egress(request).status())


@dataclass
class Outcome:
    """What happened to one request, for its metrics, journal record and audit row."""

    outcome: str = "cancelled"
    status: int = 0
    usage: Usage | None = None
    cost: float = 0.0
    message: str = ""
    stream: bool = False
    bytes_out: int = 0  # of the request, sent to the provider
    bytes_in: int = 0  # of the provider's answer (or error)


def audit_entry(egress: Egress, request: web.Request, request_id: str,
                received: datetime) -> AuditEntry:
    """The audit row of a request, from the egress's config where the headers name a
    configured profile or cloud backend, else from the headers' plain names (never text)."""
    headers = request.headers
    profile = plain(headers.get("X-Mushishi-Profile"))
    configured = egress.policy.profiles.get(profile)
    backend = plain(headers.get("X-Mushishi-Backend"))
    cloud = egress.policy.cloud.get(backend)
    return AuditEntry(
        time=received, request_id=request_id, profile=profile,
        tier=configured.tier if configured is not None else plain(headers.get("X-Mushishi-Tier")),
        backend=backend, model=cloud.model if cloud is not None else None,
        endpoint=request.path.removeprefix("/v1/"))


async def handle(request: web.Request) -> web.StreamResponse:
    """POST /v1/...: re-check, budget, reserve, send to the provider, relay, settle."""
    egress = _egress(request)
    received = egress.now()
    headers = request.headers
    verdict = admit(egress.policy, headers.get("X-Mushishi-Profile"),
                    headers.get("X-Mushishi-Tier"), headers.get("X-Mushishi-Backend"))
    request_id = request_id_for(request)
    entry = audit_entry(egress, request, request_id, received)
    if isinstance(verdict, Refused):
        egress.metrics.child(egress.metrics.sovereignty_refusals, verdict.reason.value).inc()
        log.error("refused %s: %s (the router sent profile=%s tier=%s backend=%s)",
                  request.path, verdict.message, headers.get("X-Mushishi-Profile"),
                  headers.get("X-Mushishi-Tier"), headers.get("X-Mushishi-Backend"),
                  extra={"MUSHISHI_OUTCOME": "sovereignty_refused",
                         "MUSHISHI_REFUSAL": verdict.reason.value,
                         "MUSHISHI_REQUEST_ID": request_id})
        await egress.record_refused(entry, Finish(REFUSED, verdict.reason.value, 403))
        return error_response(403, "sovereignty_refused", verdict.message)
    outcome = Outcome()
    started = time.perf_counter()
    egress.in_flight += 1
    with bind_fields(MUSHISHI_PROFILE=verdict.profile, MUSHISHI_TIER=verdict.tier,
                     MUSHISHI_BACKEND=verdict.backend.name, MUSHISHI_REQUEST_ID=request_id):
        try:
            return await _serve(egress, request, verdict, entry, outcome)
        finally:
            egress.in_flight -= 1
            egress.finish(request, verdict, outcome, time.perf_counter() - started)


async def _read_body(request: web.Request, limit: int) -> dict[str, Any] | web.Response:
    if request.content_length is not None and request.content_length > limit:
        return error_response(413, "request_too_large", f"body over {limit} bytes "
                                                        "(router.max_body_bytes)")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, "request_too_large", f"body over {limit} bytes "
                                                        "(router.max_body_bytes)")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return error_response(400, "invalid_request", "the body is not valid JSON")
    if not isinstance(body, dict):
        return error_response(400, "invalid_request", "the body must be a JSON object")
    return body


def _check_form(request: web.Request, limit: int) -> dict[str, Any] | web.Response:
    """A multipart upload is not read here (it streams to the provider): its size and type
    are checked; {} when they pass."""
    if request.content_length is not None and request.content_length > limit:
        return error_response(413, "request_too_large", f"body over {limit} bytes "
                                                        "(router.max_body_bytes)")
    if request.content_type != "multipart/form-data":
        return error_response(400, "invalid_request", f"{request.path} takes "
                                                      "multipart/form-data")
    return {}


def _bytes_out(request: web.Request, prepared: Prepared) -> int:
    """The size of the request sent to the provider (a form's, as the router announced)."""
    return request.content_length or 0 if request.path in FORM_PATHS else len(prepared.body)


async def _refuse(egress: Egress, entry: AuditEntry, outcome: Outcome, kind: str,
                  reason: str, response: web.Response) -> web.Response:
    """A request refused before anything was sent: its outcome, and its audit row on disk."""
    outcome.outcome, outcome.status = kind, response.status
    await egress.record_refused(entry, Finish(REFUSED, reason, response.status))
    return response


async def _serve(egress: Egress, request: web.Request, admission: Admission,
                 entry: AuditEntry, outcome: Outcome) -> web.StreamResponse:
    backend = admission.backend
    name = backend.name
    form = request.path in FORM_PATHS
    body = _check_form(request, egress.settings.router.max_body_bytes) if form \
        else await _read_body(request, egress.settings.router.max_body_bytes)
    if isinstance(body, web.Response):
        reason = "request_too_large" if body.status == 413 else "invalid_request"
        return await _refuse(egress, entry, outcome, "client_error", reason, body)
    provider = egress.providers[name]
    if provider.key is None:
        return await _refuse(egress, entry, outcome, "no_credential", "no_credential",
                             error_response(503, "backend_unavailable",
                                            f"cloud backend {name} has no API key: "
                                            f"{provider.key_problem}"))
    now = egress.now()
    until = provider.breaker.blocked(now)
    if until is not None:
        wait = max(int((until - now).total_seconds() + 0.999), 1)
        return await _refuse(egress, entry, outcome, "cooling_down", "cooling_down",
                             error_response(503, "backend_cooling_down",
                                            f"cloud backend {name} is cooling down until "
                                            f"{until.isoformat(timespec='seconds')} "
                                            f"({provider.breaker.reason})",
                                            {"Retry-After": str(wait)}))
    refusal = budget_refusal(backend.limits, egress.ledger.totals(name),
                             egress.ledger.in_flight(name))
    if refusal is not None:
        return await _refuse(egress, entry, outcome, "budget_exhausted", "budget_exhausted",
                             error_response(429, "budget_exhausted",
                                            f"daily budget of cloud backend {name} is "
                                            f"exhausted: {refusal}"))
    # A form goes to the provider as the router sent it (its model is the backend's
    # already), streamed; an SSE answer is relayed as a stream.
    prepared = Prepared(b"", True, False, 0) if form \
        else prepare_body(request.path, body, backend)
    outcome.stream = prepared.stream
    try:
        await egress.ledger_ready()
        reservation = await egress.ledger.reserve(
            name, entry.request_id, prepared.prompt_estimate,
            replace(entry, bytes_out=_bytes_out(request, prepared)))
    except LedgerError as error:
        log.error("not sending to %s: %s", name, error)
        return await _refuse(egress, entry, outcome, "ledger_error", "ledger_error",
                             error_response(503, "backend_unavailable",
                                            f"cloud backend {name} not asked: the budget "
                                            f"ledger cannot record the request: {error}"))
    relay = _Relay(egress, provider, request, prepared, reservation, outcome)
    return await relay.run()


class _Relay:
    """One request to one provider, from the reservation to the settled ledger row."""

    def __init__(self, egress: Egress, provider: Provider, request: web.Request,
                 prepared: Prepared, reservation: Reservation, outcome: Outcome) -> None:
        self.egress = egress
        self.provider = provider
        self.backend = provider.backend
        self.request = request
        self.prepared = prepared
        self.reservation = reservation
        self.outcome = outcome
        self.sent = False  # the request may have reached the provider
        self.closed = False  # settled or released
        self.tally = StreamTally()
        self.raw_usage: Usage | None = None  # what a raw answer counts, once it is relayed
        self.upstream_started = 0.0
        self.write: asyncio.Future[Any] | None = None

    async def run(self) -> web.StreamResponse:
        try:
            response = await self._run()
            if self.write is not None:  # the ledger agrees with the answer before it leaves
                with contextlib.suppress(LedgerError):
                    await asyncio.shield(self.write)
            return response
        finally:
            if not self.closed:
                # Cancelled (the router went away, or the drain timed out) or an unexpected
                # error: a request that may have reached the provider is counted, estimated.
                usage = self.raw_usage or self.tally.settled_usage(self.prepared.prompt_estimate)
                self._finish_ledger(usage if self.sent else None)

    def _finish_ledger(self, usage: Usage | None) -> asyncio.Future[Any]:
        """Settle with `usage`, or release when None; exactly once. The audit row is
        completed from the outcome (set before) in the same transaction."""
        self.closed = True
        outcome = self.outcome
        audit_outcome, reason = sent_outcome(outcome.outcome)
        finish = Finish(audit_outcome, reason, outcome.status, outcome.bytes_out,
                        outcome.bytes_in, usage.prompt_tokens if usage is not None else 0,
                        usage.completion_tokens if usage is not None else 0,
                        usage is not None and usage.estimated)
        if usage is None:
            self.write = self.egress.ledger.release(self.reservation, finish)
            return self.write
        cost, write = self.egress.ledger.settle(self.reservation, usage, finish)
        self.outcome.usage, self.outcome.cost = usage, cost
        self.egress.count_usage(self.backend.name, usage, cost)
        self.write = write
        return write

    async def _settle(self, usage: Usage) -> None:
        write = self._finish_ledger(usage)
        try:
            await asyncio.shield(write)  # counted on disk before the answer ends
        except LedgerError as error:
            log.error("usage of a request to %s is not on disk: %s", self.backend.name, error)

    def _count_failure(self, message: str, *, rate_limited: bool = False,
                       retry_after: float | None = None) -> None:
        """The breaker learns of a failure; a cooldown it starts is stored and counted."""
        now = self.egress.now()
        breaker = self.provider.breaker
        until = breaker.rate_limited(now, retry_after, message) if rate_limited \
            else breaker.failure(now, message)
        if until is not None:
            self.egress.cooled(self.backend.name, until, breaker.reason,
                               "retry_after" if retry_after is not None else "failures")

    def _failed(self, kind: str, status: int, message: str, *, sent: bool,
                retry_after: float | None = None) -> None:
        """A provider failure: the breaker learns of it; the ledger releases or counts."""
        self._count_failure(message, rate_limited=kind == "rate_limited",
                            retry_after=retry_after)
        self.outcome.outcome, self.outcome.status, self.outcome.message = kind, status, message
        # Never reached it, or it answered with an error: not counted. Outcome unknown
        # (timeout, cut connection): counted, estimated.
        self._finish_ledger(Usage(self.prepared.prompt_estimate, 0, estimated=True)
                            if sent else None)
        log.warning("cloud backend %s failed: %s", self.backend.name, message,
                    extra={"MUSHISHI_FAILURE": kind})

    async def _run(self) -> web.StreamResponse:
        backend = self.backend
        url = backend.base + self.request.path.removeprefix("/v1")
        upstream: aiohttp.ClientResponse | None = None
        first = b""
        self.upstream_started = time.perf_counter()
        try:
            async with asyncio.timeout(backend.first_byte_timeout_s):
                self.sent = True
                self.outcome.bytes_out = _bytes_out(self.request, self.prepared)
                headers = self.provider.headers()
                data: Any = self.prepared.body
                if self.request.path in FORM_PATHS:
                    data = self.request.content  # streamed, never held whole
                    headers["Content-Type"] = self.request.headers["Content-Type"]
                    if self.request.content_length is not None:
                        headers["Content-Length"] = str(self.request.content_length)
                upstream = await self.provider.session.post(
                    url, data=data, headers=headers, allow_redirects=False)
                if self._is_stream(upstream):
                    first = await upstream.content.readany()
                    if not first:
                        raise aiohttp.ServerDisconnectedError("closed before the first byte")
                elif self._is_raw(upstream):
                    first = await upstream.content.readany()  # may be all there is, or b""
                else:
                    first = await upstream.read()
                self.outcome.bytes_in = len(first)
        except TimeoutError:
            _close(upstream)
            message = f"no answer in {backend.first_byte_timeout_s:g}s " \
                      f"(backends.{backend.name}.first_byte_timeout_s)"
            self._failed("timeout", 504, message, sent=True)
            return error_response(504, "backend_timeout", f"{backend.name}: {message}")
        except aiohttp.ClientConnectorError as error:
            self.outcome.bytes_out = 0  # no connection: nothing of it left
            message = f"cannot connect to {backend.base} ({error.os_error or error})"
            self._failed("unreachable", 502, message, sent=False)
            return error_response(502, "backend_unreachable", f"{backend.name}: {message}")
        except asyncio.CancelledError:
            _close(upstream)
            raise
        except (aiohttp.ClientError, OSError) as error:
            _close(upstream)
            message = f"the connection broke before the answer ({error.__class__.__name__})"
            self._failed("unreachable", 502, message, sent=True)
            return error_response(502, "backend_unreachable", f"{backend.name}: {message}")
        assert upstream is not None
        status = upstream.status
        if status >= 300:
            _close(upstream)
            return self._provider_error(upstream, first)
        self.provider.breaker.success()
        self.egress.recovered(backend.name)
        if self._is_stream(upstream):
            return await self._relay_stream(upstream, first)
        if self._is_raw(upstream):
            return await self._relay_raw(upstream, first)
        upstream.release()
        return await self._answer_whole(upstream, first)

    def _is_stream(self, upstream: aiohttp.ClientResponse) -> bool:
        return self.prepared.stream and upstream.status == 200 and \
            upstream.content_type == SSE

    def _is_raw(self, upstream: aiohttp.ClientResponse) -> bool:
        """A 200 answer relayed as it arrives: on an endpoint that answers other than JSON
        (speech audio, speech as SSE, a text/srt/vtt transcript), anything but JSON. Chat,
        completions and embeddings are read whole for their usage, whatever their type."""
        return self.request.path in RAW_ANSWER_PATHS and upstream.status == 200 and \
            upstream.content_type != "application/json" and not self._is_stream(upstream)

    def _provider_error(self, upstream: aiohttp.ClientResponse, body: bytes) -> web.Response:
        status = upstream.status
        name = self.backend.name
        # `detail` (the provider's message, which may quote the prompt) goes back to the
        # router's caller only; the log, the cooldown reason and the audit get `facts`.
        detail = _error_message(body) or f"HTTP {status}"
        facts = body_facts(body)
        if status == 429:
            retry_after = parse_retry_after(upstream.headers.get("Retry-After"), self.egress.now(),
                                            self.egress.settings.egress.max_retry_after_s)
            self._failed("rate_limited", 429, f"rate limited ({facts})", sent=False,
                         retry_after=retry_after)
            headers = {"Retry-After": str(max(int(retry_after + 0.999), 1))} \
                if retry_after is not None else None
            return error_response(429, "rate_limited", f"{name} rate limited the request: "
                                                       f"{detail}", headers)
        if status >= 500 or status in PROVIDER_FAULT_4XX or status < 400:
            what = "redirected (never followed)" if status < 400 else f"answered {status}"
            self._failed("provider_error", status if status >= 400 else 502,
                         f"{what} ({facts})", sent=False)
            return _relay_error(status if status >= 400 else 502, body,
                                f"{name} {what}: {detail}")
        # The request's own fault (400, 413, 422 …): the router returns it to the caller.
        self.outcome.outcome, self.outcome.status = "client_error", status
        self._finish_ledger(None)
        return _relay_error(status, body, f"{name} answered {status}: {detail}")

    async def _answer_whole(self, upstream: aiohttp.ClientResponse,
                            body: bytes) -> web.Response:
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            parsed = None
        usage = self._usage(parsed)
        self.outcome.outcome, self.outcome.status = "success", upstream.status
        await self._settle(usage)
        self._observe()
        return web.Response(status=upstream.status, body=body, headers={
            "Content-Type": upstream.headers.get("Content-Type", "application/json")})

    def _usage(self, parsed: Any) -> Usage:
        """What an answer used: the provider's usage, or for an upload one request (and
        its audio seconds), or else an estimate."""
        usage = usage_from(parsed)
        form = self.request.path in FORM_PATHS
        if usage is None and form:
            usage = Usage()  # an upload: counted as a request (and in audio seconds)
        elif usage is None:
            usage = Usage(self.prepared.prompt_estimate,
                          estimate_tokens(completion_text_bytes(parsed)) if parsed else 0,
                          estimated=True)
        seconds = audio_seconds_from(parsed) if form else None
        if seconds is not None:
            usage = replace(usage, audio_seconds=seconds)
        return usage

    async def _relay_raw(self, upstream: aiohttp.ClientResponse,
                         first: bytes) -> web.StreamResponse:
        """A raw answer (`_is_raw`), relayed as it arrives with its content type; counted
        as its endpoint's answers without usage are (`_usage`)."""
        headers = {"Content-Type": upstream.headers.get("Content-Type",
                                                        "application/octet-stream")}
        if upstream.content_length is not None:
            headers["Content-Length"] = str(upstream.content_length)
        usage = self.raw_usage = self._usage(None)
        return await self._relay(upstream, first, web.StreamResponse(status=200,
                                                                     headers=headers),
                                 convert=lambda data: data, rest=lambda: b"",
                                 usage=lambda: usage, noun="answer",
                                 progress=lambda: f"{self.outcome.bytes_in} bytes")

    async def _relay_stream(self, upstream: aiohttp.ClientResponse,
                            first: bytes) -> web.StreamResponse:
        """An event stream, relayed event by event: usage counted from the events (and the
        usage-only event dropped when the caller did not ask for it)."""
        splitter = SseSplitter()
        tally = self.tally
        strip = self.prepared.strip_usage

        def convert(data: bytes) -> bytes:
            out = []
            for event in splitter.feed(data):
                meaning = read_event(event)
                tally.take(meaning)
                if not (strip and meaning.usage_only):
                    out.append(event)
            return b"".join(out)

        return await self._relay(upstream, first, web.StreamResponse(status=200, headers={
            "Content-Type": SSE, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}),
            convert=convert, rest=splitter.rest,
            usage=lambda: tally.settled_usage(self.prepared.prompt_estimate), noun="stream",
            progress=lambda: f"{tally.chunks} chunk(s)")

    async def _relay(self, upstream: aiohttp.ClientResponse, first: bytes,
                     response: web.StreamResponse, *, convert: Callable[[bytes], bytes],
                     rest: Callable[[], bytes], usage: Callable[[], Usage], noun: str,
                     progress: Callable[[], str]) -> web.StreamResponse:
        """Relay a 200 answer as it arrives (`convert` each piece, `rest` at the end). A
        provider silent for the backend's stream_idle_timeout_s, or one that breaks off, has
        the answer cut: the router then ends its own with an error."""
        idle = self.backend.stream_idle_timeout_s
        checkpointed = time.monotonic()
        complete = False
        self.outcome.status = 200
        try:
            await response.prepare(self.request)
            data = first
            while data:
                out = convert(data)
                if out:
                    await response.write(out)
                if time.monotonic() - checkpointed >= CHECKPOINT_EVERY_S:
                    checkpointed = time.monotonic()
                    self.egress.ledger.checkpoint(self.reservation, self.tally.chunks)
                try:
                    async with asyncio.timeout(idle):
                        data = await upstream.content.readany()
                    self.outcome.bytes_in += len(data)
                except TimeoutError:
                    raise _Broken(f"sent nothing for {idle:g}s") from None
                except (aiohttp.ClientError, OSError) as error:
                    raise _Broken(f"broke off the {noun} ({error.__class__.__name__})") \
                        from None
            tail = rest()
            if tail:
                await response.write(tail)
            complete = True
        except _Broken as broken:
            message = f"{self.backend.name} {broken} after {progress()}"
            self._count_failure(message)
            log.warning("%s from cloud backend %s failed after its first byte: %s; "
                        "cutting it to the router", noun, self.backend.name, broken)
            self.outcome.outcome, self.outcome.message = "broken_stream", message
            await self._settle(usage())
            _close(upstream)
            if self.request.transport is not None:
                self.request.transport.abort()  # the router ends its answer with an error
            return response
        except (ConnectionError, RuntimeError):
            self.outcome.outcome = "cancelled"
            _close(upstream)
            await self._settle(usage())
            return response
        finally:
            if not complete:
                _close(upstream)
        upstream.release()
        self.outcome.outcome = "success"
        await self._settle(usage())
        self._observe()
        try:
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            self.outcome.outcome = "cancelled"
        return response

    def _observe(self) -> None:
        metrics = self.egress.metrics
        metrics.child(metrics.upstream_seconds, self.backend.name).observe(
            time.perf_counter() - self.upstream_started)


class _Broken(Exception):
    """The provider's stream failed after its first byte."""


def _close(upstream: aiohttp.ClientResponse | None) -> None:
    if upstream is not None:
        upstream.close()


def _error_message(body: bytes) -> str:
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        text = body[:200].decode("utf-8", "replace").strip()
        return text if text and "<" not in text[:1] else ""
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict):
            return str(error.get("message", ""))[:300]
        if isinstance(error, str):
            return error[:300]
        if isinstance(parsed.get("message"), str):
            return parsed["message"][:300]
    return ""


def _relay_error(status: int, body: bytes, message: str) -> web.Response:
    """The provider's error as it sent it when it is OpenAI-shaped, else wrapped."""
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        return web.Response(status=status, body=body, content_type="application/json")
    return error_response(status, "backend_error", message)
