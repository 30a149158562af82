"""Forwarding one request along its profile's chain: slots, queues, fallback, relaying.

The chain comes from the compiled route table only. Each hop is judged from state (no
round trip for a backend known down or in another GPU mode); a connection error, a timeout
before the first byte, a 5xx or 429 moves to the next hop where the tier allows; a 4xx the
request caused is returned as is. Once the first byte of a stream has reached the client,
a failure ends the stream with an error event and no `[DONE]`; nothing is spliced in.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from mushishi.services.router import anthropic
from mushishi.services.router.core import (
    ERROR_HTTP,
    ErrorCode,
    Failure,
    Health,
    HopFailure,
    ModeGate,
    RouteProfile,
    final_error,
    mode_gate,
    status_is_retryable,
    t1_should_wait,
)
from mushishi.services.router.health import classify_refusal
from mushishi.services.router.state import QueueFull
from mushishi.services.router.upstream import refused_by_policy

if TYPE_CHECKING:
    from mushishi.services.router.app import Router
    from mushishi.services.router.core import Hop

log = logging.getLogger("mushishi.router.request")

_PROMPT_TOKENS = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
_ERROR_BODY_LIMIT = 64 * 1024
SSE_CONTENT_TYPE = "text/event-stream"


@dataclass
class Call:
    """One request on its way through the router."""

    request_id: str
    api: str  # "openai" | "anthropic"
    path: str  # upstream path below the base, e.g. "/chat/completions"
    profile: RouteProfile
    hops: tuple[Hop, ...]
    body: dict[str, Any]
    stream: bool
    client_model: str
    started: float  # perf_counter at arrival
    excluded: float = 0.0  # seconds spent queued or on failed hops: not router overhead
    fallbacks: int = 0
    failures: list[HopFailure] = field(default_factory=list)
    backend: str = "none"
    status: int = 0
    outcome: str = ""
    first_byte: float | None = None
    overhead: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    _encoded: dict[str, bytes] = field(default_factory=dict)

    def body_for(self, hop: Hop) -> bytes:
        """The request body with `model` set to the hop's served model name."""
        found = self._encoded.get(hop.model)
        if found is None:
            self.body["model"] = hop.model
            found = json.dumps(self.body, ensure_ascii=False, separators=(",", ":"),
                               allow_nan=False).encode()
            self._encoded[hop.model] = found
        return found


class Rejection(Exception):
    """A request answered with a stable error code, before or after trying backends."""

    def __init__(self, code: ErrorCode, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or ERROR_HTTP[code][0]


def error_body(api: str, code: str, message: str, status: int) -> bytes:
    """An error in the caller's API shape; both shapes carry error.message/type/code."""
    if api == "anthropic":
        kind = anthropic.ERROR_TYPES.get(status, "api_error")
        return json.dumps({"type": "error", "error": {
            "type": kind, "message": message, "code": code}}).encode()
    kind = ERROR_HTTP[ErrorCode(code)][1] if code in ErrorCode.__members__.values() else \
        "server_error"
    return json.dumps({"error": {"message": message, "type": kind, "code": code,
                                 "param": None}}).encode()


def _stream_error(call: Call, message: str) -> bytes:
    code = ErrorCode.BACKEND_FAILED.value
    if call.api == "anthropic":
        return anthropic.error_event(message, "api_error", code)
    return b"data: " + json.dumps({"error": {"message": message, "type": "server_error",
                                             "code": code}}).encode() + b"\n\n"


def _count_tokens(call: Call, data: bytes) -> None:
    prompt = _PROMPT_TOKENS.findall(data)
    if prompt:
        call.prompt_tokens = int(prompt[-1])
    completion = _COMPLETION_TOKENS.findall(data)
    if completion:
        call.completion_tokens = int(completion[-1])


async def forward(router: Router, call: Call, request: web.Request) -> web.StreamResponse:
    """Answer `call` from its profile's chain, or raise Rejection."""
    profile = call.profile
    deadline = router.clock() + profile.queue_timeout_s
    await _pass_mode_gate(router, call, deadline)
    queued_at: float | None = None
    try:
        while True:
            failures_before = len(call.failures)
            response = await _one_pass(router, call, request, deadline)
            if response is not None:
                return response
            this_pass = call.failures[failures_before:]
            remaining = deadline - router.clock()
            if not t1_should_wait(profile, this_pass) or remaining <= 0:
                failures = this_pass or call.failures
                code, message = final_error(profile, failures, waited=queued_at is not None)
                # Nothing was tried (all down, busy or in another mode): unavailable, not bad.
                untried = all(f.kind in (Failure.UNAVAILABLE, Failure.FULL) for f in failures)
                raise Rejection(code, message, status=503 if untried and code in (
                    ErrorCode.BACKEND_FAILED, ErrorCode.ALL_BACKENDS_FAILED) else None)
            if queued_at is None:
                waiting = router.board.waiting.get(profile.name, 0)
                if waiting >= profile.queue_max:
                    raise Rejection(ErrorCode.SOVEREIGN_BACKENDS_UNAVAILABLE, (
                        f"no local backend of profile {profile.name!r} can answer now and its "
                        f"queue is full ({profile.queue_max} waiting; profiles.{profile.name}"
                        f".queue_max): " + "; ".join(f.describe() for f in this_pass)))
                router.board.waiting[profile.name] = waiting + 1
                queued_at = time.perf_counter()
                log.info("queued: no local backend of %s can answer now (%s)", profile.name,
                         "; ".join(f.describe() for f in this_pass))
            await router.board.wait_change(remaining)
    finally:
        if queued_at is not None:
            router.board.waiting[profile.name] -= 1
            call.excluded += time.perf_counter() - queued_at


async def _pass_mode_gate(router: Router, call: Call, deadline: float) -> None:
    """A T1-strict profile's required mode: open, wait for a switch, ask for one, or refuse."""
    profile = call.profile
    asked = False
    while True:
        gate, why = mode_gate(profile, router.board.gpu)
        if gate is ModeGate.OPEN:
            return
        remaining = deadline - router.clock()
        if remaining <= 0:
            raise Rejection(ErrorCode.MODE_MISMATCH, f"{why} (waited {profile.queue_timeout_s:g}"
                                                     "s)")
        if gate is ModeGate.MISMATCH and not asked:
            if profile.on_mode_mismatch != "switch" or not router.board.gpu.present:
                raise Rejection(ErrorCode.MODE_MISMATCH, why)
            asked = True
            started = time.perf_counter()
            await router.request_switch(profile, remaining)
            call.excluded += time.perf_counter() - started
            continue
        # A switch is under way (ours or another's): wait for gpud's view to follow.
        started = time.perf_counter()
        await router.board.wait_change(remaining)
        call.excluded += time.perf_counter() - started


def _later_usable(router: Router, call: Call, index: int) -> bool:
    return any(router.board.verdict(hop.name).usable for hop in call.hops[index + 1:])


async def _one_pass(router: Router, call: Call, request: web.Request,
                    deadline: float) -> web.StreamResponse | None:
    """Try each hop once; a response, or None with the failures recorded in `call`."""
    profile = call.profile
    for index, hop in enumerate(call.hops):
        verdict = router.board.verdict(hop.name)
        if not verdict.usable:
            call.failures.append(HopFailure(hop.name, Failure.UNAVAILABLE, verdict.reason))
            if not profile.falls_back:
                return None
            continue
        if profile.sovereign and not hop.local:
            # Unreachable by construction (config check + compile_table); refuse regardless.
            router.metrics.child(router.metrics.sovereignty_refusals, "router").inc()
            log.error("refused to send %s work to non-local backend %s", profile.tier, hop.name)
            call.failures.append(HopFailure(hop.name, Failure.REFUSED, "not local"))
            continue
        slots = router.board.backends[hop.name].slots
        if not slots.try_acquire():
            if profile.falls_back and _later_usable(router, call, index):
                call.failures.append(HopFailure(hop.name, Failure.FULL, "at max_concurrency"))
                _count_fallback(router, call, hop, "full")
                continue
            waited_from = time.perf_counter()
            try:
                got = await slots.acquire(deadline - router.clock())
            except QueueFull:
                got = False
                reason = f"at max_concurrency with a full queue (backends.{hop.name}.queue_max)"
            else:
                reason = "no free slot in time"
            finally:
                call.excluded += time.perf_counter() - waited_from
            if not got:
                call.failures.append(HopFailure(hop.name, Failure.FULL, reason))
                if not profile.falls_back:
                    return None
                continue
        try:
            response = await _attempt(router, call, hop, request)
        finally:
            slots.release()
        if response is not None:
            return response
        _count_fallback(router, call, hop, call.failures[-1].kind.value)
        if not profile.falls_back:
            return None
    return None


def _count_fallback(router: Router, call: Call, hop: Hop, reason: str) -> None:
    call.fallbacks += 1
    router.metrics.child(router.metrics.fallbacks, call.profile.name, hop.name, reason).inc()


async def _attempt(router: Router, call: Call, hop: Hop,
                   request: web.Request) -> web.StreamResponse | None:
    """Send the call to one hop; the client's response, or None after recording a failure."""
    endpoint = router.upstreams.endpoint(hop.name)
    data = call.body_for(hop)
    headers = router.upstream_headers(call, hop)
    sent = time.perf_counter()
    call.overhead = sent - call.started - call.excluded
    upstream: aiohttp.ClientResponse | None = None
    first = b""
    try:
        async with asyncio.timeout(hop.first_byte_timeout_s):
            upstream = await endpoint.session.post(endpoint.prefix + call.path, data=data,
                                                   headers=headers, allow_redirects=False)
            streaming = call.stream and upstream.status == 200 and \
                upstream.content_type == SSE_CONTENT_TYPE
            if streaming:
                first = await upstream.content.readany()
                if not first:
                    raise aiohttp.ServerDisconnectedError("closed before the first byte")
            elif status_is_retryable(upstream.status):
                first = await upstream.content.read(_ERROR_BODY_LIMIT)
            else:
                first = await upstream.read()
    except TimeoutError:
        _release(upstream)
        return _failed(call, hop, sent, Failure.TIMEOUT,
                       f"no first byte in {hop.first_byte_timeout_s:g}s")
    except aiohttp.ClientConnectorError as error:
        if endpoint.via_egress:  # a unix socket: EACCES here is a file mode, not the kernel
            log.error("cannot reach mushishi-egress at %s for cloud backend %s (%s): cloud hops "
                      "fail until it runs", router.settings.router.egress_socket, hop.name,
                      error.os_error)
            return _failed(call, hop, sent, Failure.EGRESS,
                           "mushishi-egress is not reachable")
        layer = refused_by_policy(error)
        if layer is not None:
            router.metrics.child(router.metrics.sovereignty_refusals, layer).inc()
            log.warning("the %s sovereignty check refused a connection for backend %s: %s",
                        layer, hop.name, error.os_error)
            return _failed(call, hop, sent, Failure.REFUSED,
                           f"refused by the {layer} check ({error.os_error})")
        health, reason = classify_refusal(hop, router.board, router.clock())
        router.board.set_health(hop.name, health, reason)
        router.prober_kick(hop.name)
        return _failed(call, hop, sent, Failure.CONNECT, reason)
    except (aiohttp.ClientError, OSError) as error:
        _release(upstream)
        router.prober_kick(hop.name)
        return _failed(call, hop, sent, Failure.BROKEN,
                       f"failed before the first byte ({error.__class__.__name__})")
    assert upstream is not None
    call.first_byte = time.perf_counter()
    if status_is_retryable(upstream.status):
        _release(upstream)
        kind, reason = _describe_status(upstream.status, first)
        return _failed(call, hop, sent, kind, reason, upstream.status)
    if hop.local and router.board.backends[hop.name].health is not Health.UP:
        router.board.set_health(hop.name, Health.UP, "healthy")
    call.backend = hop.name
    call.status = upstream.status
    call.outcome = "success" if upstream.status < 400 else "client_error"
    if call.stream and upstream.status == 200 and upstream.content_type == SSE_CONTENT_TYPE:
        return await _relay_stream(router, call, hop, request, upstream, first)
    upstream.release()  # read to the end: the connection goes back to the pool
    return _respond_whole(router, call, hop, upstream, first)


def _release(upstream: aiohttp.ClientResponse | None) -> None:
    """Drop a response that will not be relayed; its connection is not reused (its body may
    be unread or half read)."""
    if upstream is not None:
        upstream.close()


def _describe_status(status: int, body: bytes) -> tuple[Failure, str]:
    message = ""
    code = ""
    try:
        parsed = json.loads(body)
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(error, dict):
            message = str(error.get("message", ""))[:200]
            code = str(error.get("code") or "")
        elif isinstance(error, str):
            message = error[:200]
    except (ValueError, UnicodeDecodeError):
        message = ""
    if code == ErrorCode.BUDGET_EXHAUSTED.value:
        return Failure.BUDGET, f"budget exhausted ({message or status})"
    detail = f"answered {status}" + (f" ({message})" if message else "")
    return Failure.STATUS, detail


def _failed(call: Call, hop: Hop, sent: float, kind: Failure, reason: str,
            status: int | None = None) -> None:
    call.excluded += time.perf_counter() - sent
    failure = HopFailure(hop.name, kind, reason, status, cloud=not hop.local)
    call.failures.append(failure)
    log.warning("backend %s failed: %s", hop.name, reason,
                extra={"MUSHISHI_BACKEND": hop.name, "MUSHISHI_FAILURE": kind.value})
    return None


def _respond_whole(router: Router, call: Call, hop: Hop, upstream: aiohttp.ClientResponse,
                   body: bytes) -> web.Response:
    """A complete (non-streamed) answer: relayed, or translated for Anthropic callers."""
    if upstream.status < 300:
        _count_tokens(call, body[-2048:])
    content_type = upstream.headers.get("Content-Type", "application/json")
    if upstream.status >= 400 and call.api == "openai":
        body, content_type = _client_error(body, upstream.status), "application/json"
    elif call.api == "anthropic":
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            parsed = None
        if upstream.status < 300 and isinstance(parsed, dict):
            body = json.dumps(anthropic.chat_to_message(parsed, call.client_model)).encode()
        else:
            message = _upstream_message(parsed) or f"backend answered {upstream.status}"
            body = error_body("anthropic", ErrorCode.INVALID_REQUEST.value, message,
                              upstream.status)
        content_type = "application/json"
    headers = router.response_headers(call, hop.name)
    headers["Content-Type"] = content_type
    call.overhead += time.perf_counter() - (call.first_byte or time.perf_counter())
    headers["X-Mushishi-Overhead-Ms"] = f"{call.overhead * 1000:.3f}"
    return web.Response(body=body, status=upstream.status, headers=headers)


def _client_error(body: bytes, status: int) -> bytes:
    """A 4xx the request caused, as the backend said it, under the stable code invalid_request
    (the backend's own code is kept as `backend_code`)."""
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        error = dict(error)
        error["backend_code"] = error.get("code")
        error["code"] = ErrorCode.INVALID_REQUEST.value
        error.setdefault("type", "invalid_request_error")
        error.setdefault("message", f"backend answered {status}")
        return json.dumps({**parsed, "error": error}).encode()
    message = _upstream_message(parsed) or body[:500].decode("utf-8", "replace") or \
        f"backend answered {status}"
    return error_body("openai", ErrorCode.INVALID_REQUEST.value, message, status)


def _upstream_message(parsed: Any) -> str:
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict):
            return str(error.get("message", ""))
        if isinstance(error, str):
            return error
        if isinstance(parsed.get("message"), str):
            return parsed["message"]
    return ""


async def _relay_stream(router: Router, call: Call, hop: Hop, request: web.Request,
                        upstream: aiohttp.ClientResponse, first: bytes) -> web.StreamResponse:
    """Relay a stream whose first byte has arrived; past this point there is no fallback."""
    translator = anthropic.StreamTranslator(call.client_model) if call.api == "anthropic" \
        else None
    headers = router.response_headers(call, hop.name)
    headers["Content-Type"] = SSE_CONTENT_TYPE
    headers["Cache-Control"] = "no-cache"
    headers["X-Accel-Buffering"] = "no"
    call.overhead += time.perf_counter() - (call.first_byte or time.perf_counter())
    headers["X-Mushishi-Overhead-Ms"] = f"{call.overhead * 1000:.3f}"
    response = web.StreamResponse(status=200, headers=headers)
    idle = router.settings.router.stream_idle_timeout_s
    complete = False
    try:
        await response.prepare(request)
        chunk = first
        while chunk:
            if b'"usage"' in chunk:
                _count_tokens(call, chunk)
            if translator is not None:
                try:
                    chunk = translator.feed(chunk)
                except anthropic.UpstreamStreamError as error:
                    raise _BrokenStream(f"backend {hop.name} sent an error: {error}") from None
            if chunk:
                await response.write(chunk)
            try:
                async with asyncio.timeout(idle):
                    chunk = await upstream.content.readany()
            except TimeoutError:
                raise _BrokenStream(f"backend {hop.name} sent nothing for {idle:g}s") from None
            except (aiohttp.ClientError, OSError) as error:
                raise _BrokenStream(f"backend {hop.name} broke off the stream "
                                    f"({error.__class__.__name__})") from None
        if translator is not None:
            tail = translator.finish()
            if tail:
                await response.write(tail)
        complete = True
        await response.write_eof()
    except _BrokenStream as broken:
        call.outcome = ErrorCode.BACKEND_FAILED.value
        log.warning("stream from %s failed after its first byte: %s; ended with an error "
                    "event, no [DONE]", hop.name, broken, extra={"MUSHISHI_BACKEND": hop.name})
        router.prober_kick(hop.name)
        try:
            await response.write(_stream_error(call, str(broken)))
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass
    except (ConnectionError, RuntimeError):
        call.outcome = "client_disconnected"
    finally:
        if complete:
            upstream.release()
        else:
            upstream.close()  # the backend sees the connection drop and stops generating
    return response


class _BrokenStream(Exception):
    """The upstream stream failed after its first byte."""
