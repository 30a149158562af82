"""Relaying one attempt: send a call to one hop and hand its answer to the caller.

`Relay.attempt` returns the caller's response once the hop's answer has begun, or the
`HopFailure` saying why the hop did not answer (a connection error, a timeout before the
first byte, a 5xx or 429, a sovereignty refusal); the chain policy decides what comes next.
A 4xx the request caused is relayed as is. Once the first byte of a stream has reached the
caller there is no going back: a failure ends the stream with an error event and no
`[DONE]`, and nothing from another backend is spliced in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from mushishi.services.router import anthropic, comfyui, responses
from mushishi.services.router.accounting import Accounting
from mushishi.services.router.call import Call, JsonBody, RequestBody, Streamed
from mushishi.services.router.comfyui import ImageStore
from mushishi.services.router.core import (
    TRANSLATED_ENDPOINTS,
    Failure,
    Health,
    Hop,
    HopFailure,
    status_is_retryable,
)
from mushishi.services.router.errors import (
    ErrorCode,
    client_error_body,
    error_body,
    parse_json,
    stream_error_event,
    upstream_code,
    upstream_message,
)
from mushishi.services.router.health import classify_refusal
from mushishi.services.router.http1 import ConnectFailed, Response, ResponseBroken
from mushishi.services.router.state import RoutingState
from mushishi.services.router.upstream import SovereigntyRefusal, Upstreams, refused_by_policy
from mushishi.shared.comfyui_workflow import WorkflowError
from mushishi.shared.log_safe import body_facts, error_facts, without_quoted

log = logging.getLogger("mushishi.router.request")

_ERROR_BODY_LIMIT = 64 * 1024
SSE_CONTENT_TYPE = "text/event-stream"
_JSON_TYPE = b"Content-Type: application/json\r\n"


@dataclass(frozen=True, slots=True)
class Relay:
    """Everything one attempt needs, built once by the wiring."""

    upstreams: Upstreams
    state: RoutingState
    accounting: Accounting
    kick_probe: Callable[[str], None]  # probe a backend now (after it failed a request)
    clock: Callable[[], float]
    stream_idle_timeout_s: float
    egress_socket: str  # named in the log line when the egress cannot be reached
    images: ImageStore  # images of comfyui backends answered as URLs
    # The fixed headers of each (profile, tier, hop), as request lines: built once (a reload
    # may give a profile another tier).
    _headers: dict[tuple[str, str, str], bytes] = field(default_factory=dict)

    async def attempt(self, call: Call, hop: Hop, body: RequestBody,
                      request: web.Request) -> web.StreamResponse | HopFailure:
        """Send `call` to `hop`: the caller's response, or why the hop did not answer."""
        if hop.kind == "comfyui":
            return await self._comfyui(call, hop, body, request)
        endpoint = self.upstreams.endpoint(hop.name)
        data = body.for_hop(hop)
        headers = self._request_headers(call, hop, body.content_type)
        path = upstream_path(call, hop)
        sent = time.perf_counter()
        call.sending(sent)
        upstream: Response | None = None
        first = b""
        try:
            async with asyncio.timeout(hop.first_byte_timeout_s):
                if isinstance(data, Streamed):
                    upstream = await endpoint.pool.request(
                        "POST", endpoint.prefix + path, headers, data.chunks,
                        length=data.length)
                else:
                    upstream = await endpoint.pool.request("POST", endpoint.prefix + path,
                                                           headers, data)
                if self._streams(call, upstream) or _raw(call, upstream):
                    first = await upstream.read_some()
                    if not first:
                        raise ResponseBroken("the upstream closed the stream before its first "
                                             "byte")
                elif status_is_retryable(upstream.status):
                    first = (await upstream.read_some())[:_ERROR_BODY_LIMIT]
                else:
                    first = await upstream.read()
        except TimeoutError:
            _drop(upstream)
            return _failed(call, hop, sent, Failure.TIMEOUT,
                           f"no first byte in {hop.first_byte_timeout_s:g}s")
        except ConnectFailed as error:
            return self._not_connected(call, hop, sent, error)
        except (ResponseBroken, OSError) as error:
            _drop(upstream)
            self.kick_probe(hop.name)
            return _failed(call, hop, sent, Failure.BROKEN,
                           f"failed before the first byte ({without_quoted(str(error))})")
        call.first_byte_arrived(time.perf_counter())
        self.state.heard_from(hop.name)
        if status_is_retryable(upstream.status):
            upstream.close()
            kind, reason = _describe_status(upstream.status, first)
            return _failed(call, hop, sent, kind, reason, upstream.status)
        if hop.local and self.state.health(hop.name) is not Health.UP:
            self.state.set_health(hop.name, Health.UP, "healthy")
        call.answered(hop.name, upstream.status)
        if self._streams(call, upstream):
            return await self._relay_stream(call, hop, request, upstream, first)
        if _raw(call, upstream):
            return await self._relay_stream(call, hop, request, upstream, first, raw=True)
        upstream.release()  # read to the end: the connection goes back to the pool
        return await self._respond_whole(call, hop, request, upstream, first)

    async def _comfyui(self, call: Call, hop: Hop, body: RequestBody,
                       request: web.Request) -> web.StreamResponse | HopFailure:
        """An images request run as the hop's ComfyUI workflow (`comfyui`), answered
        OpenAI-shaped; a request ComfyUI cannot take is a Rejection (400)."""
        assert isinstance(body, JsonBody), "comfyui backends serve JSON endpoints only"
        wanted = comfyui.image_request(body.fields)
        sent = time.perf_counter()
        call.sending(sent)
        try:
            async with asyncio.timeout(hop.first_byte_timeout_s):
                runs = comfyui.graphs(await comfyui.read_template(hop),
                                      dict(hop.workflow_inputs), wanted)
                websocket = await self.upstreams.websocket_url(
                    hop.name, f"/ws?clientId={comfyui.new_client_id()}")
                images = await comfyui.run_workflows(self.upstreams.endpoint(hop.name).pool,
                                                     websocket, runs, hop)
        except TimeoutError:
            return _failed(call, hop, sent, Failure.TIMEOUT,
                           f"no images in {hop.first_byte_timeout_s:g}s "
                           f"(backends.{hop.name}.first_byte_timeout_s)")
        except ConnectFailed as error:
            return self._not_connected(call, hop, sent, error)
        except WorkflowError as error:
            return _failed(call, hop, sent, Failure.STATUS, str(error))
        except comfyui.RunFailed as failure:
            if failure.kind is Failure.CONNECT:
                health, reason = classify_refusal(hop, self.state, self.clock())
                self.state.set_health(hop.name, health, reason)
            if failure.kind in (Failure.CONNECT, Failure.BROKEN):
                self.kick_probe(hop.name)
            return _failed(call, hop, sent, failure.kind, failure.reason, failure.status)
        except SovereigntyRefusal as refusal:
            self.accounting.sovereignty_refused("connect-time")
            return _failed(call, hop, sent, Failure.REFUSED, str(refusal))
        except (ResponseBroken, OSError) as error:
            self.kick_probe(hop.name)
            return _failed(call, hop, sent, Failure.BROKEN,
                           f"ComfyUI broke off ({without_quoted(str(error))})")
        call.first_byte_arrived(time.perf_counter())
        if self.state.health(hop.name) is not Health.UP:
            self.state.set_health(hop.name, Health.UP, "healthy")
        call.answered(hop.name, 200)
        answer = comfyui.openai_images(images, wanted, self.images,
                                       f"{request.scheme}://{request.host}")
        headers = _answer_headers(call, hop.name)
        headers["Content-Type"] = "application/json"
        headers["X-Mushishi-Overhead-Ms"] = f"{call.relaying(time.perf_counter()) * 1000:.3f}"
        response = web.Response(body=json.dumps(answer).encode(), status=200, headers=headers)
        with contextlib.suppress(ConnectionError, RuntimeError):  # the caller went away
            await response.prepare(request)
            await response.write_eof()
        return response

    @staticmethod
    def _streams(call: Call, upstream: Response) -> bool:
        return call.stream and upstream.status == 200 and \
            upstream.content_type == SSE_CONTENT_TYPE

    def _request_headers(self, call: Call, hop: Hop, content_type: str) -> bytes:
        """Headers sent to the hop: never the caller's credentials."""
        key = (call.profile.name, call.profile.tier, hop.name)
        base = self._headers.get(key)
        if base is None:
            lines = [("Accept-Encoding", "identity")]
            if not hop.local:
                lines += [("X-Mushishi-Profile", call.profile.name),
                          ("X-Mushishi-Tier", call.profile.tier),
                          ("X-Mushishi-Backend", hop.name)]
            base = self._headers[key] = b"".join(_header_line(*line) for line in lines)
        kind = _JSON_TYPE if content_type == "application/json" else \
            _header_line("Content-Type", content_type)
        return kind + base + b"X-Request-Id: " + call.request_id.encode("ascii") + b"\r\n"

    def _not_connected(self, call: Call, hop: Hop, sent: float,
                       error: ConnectFailed) -> HopFailure:
        """A connection that never opened: the egress down, a sovereignty refusal, or the
        backend refusing (down, or starting while its GPU mode starts)."""
        if self.upstreams.endpoint(hop.name).via_egress:
            # A unix socket: EACCES here is a file mode, not the kernel.
            log.error("cannot reach mushishi-egress at %s for cloud backend %s (%s): cloud hops "
                      "fail until it runs", self.egress_socket, hop.name, error.os_error)
            return _failed(call, hop, sent, Failure.EGRESS, "mushishi-egress is not reachable")
        layer = refused_by_policy(error)
        if layer is not None:
            self.accounting.sovereignty_refused(layer)
            log.warning("the %s sovereignty check refused a connection for backend %s: %s",
                        layer, hop.name, error.os_error)
            return _failed(call, hop, sent, Failure.REFUSED,
                           f"refused by the {layer} check ({error.os_error})")
        health, reason = classify_refusal(hop, self.state, self.clock())
        self.state.set_health(hop.name, health, reason)
        self.kick_probe(hop.name)
        return _failed(call, hop, sent, Failure.CONNECT, reason)

    async def _respond_whole(self, call: Call, hop: Hop, request: web.Request,
                             upstream: Response, body: bytes) -> web.StreamResponse:
        """A complete (non-streamed) answer: relayed, or translated for Anthropic callers.
        It is written here, so that what is counted afterwards does not delay it."""
        if call.feedback is not None and call.feedback.committed:
            # The wait was announced as an event stream: what is not one ends it as an error.
            message = upstream_message(parse_json(body)) if upstream.status >= 400 else ""
            call.stream_broke(ErrorCode.BACKEND_FAILED.value)
            return await call.feedback.end_with(stream_error_event(
                call.api, f"backend {hop.name} answered {upstream.status} without a stream"
                + (f": {message}" if message else "")))
        if upstream.status < 300:
            call.count_tokens(body[-2048:])
        content_type = upstream.headers.get("content-type", "application/json")
        if upstream.status >= 400 and call.api != "anthropic":
            body, content_type = client_error_body(body, upstream.status), "application/json"
        elif _translated(call, hop):
            parsed = parse_json(body)
            if isinstance(parsed, dict):
                body = json.dumps(responses.chat_to_response(
                    parsed, call.original or {}, call.client_model),
                    ensure_ascii=False).encode()
            content_type = "application/json"
        elif call.api == "anthropic":
            parsed = parse_json(body)
            if upstream.status < 300 and isinstance(parsed, dict):
                body = json.dumps(anthropic.chat_to_message(parsed, call.client_model)).encode()
            else:
                message = upstream_message(parsed) or f"backend answered {upstream.status}"
                body = error_body("anthropic", ErrorCode.INVALID_REQUEST.value, message,
                                  upstream.status)
            content_type = "application/json"
        headers = _answer_headers(call, hop.name)
        headers["Content-Type"] = content_type
        overhead = call.relaying(time.perf_counter())
        headers["X-Mushishi-Overhead-Ms"] = f"{overhead * 1000:.3f}"
        response = web.Response(body=body, status=upstream.status, headers=headers)
        with contextlib.suppress(ConnectionError, RuntimeError):  # the caller went away
            await response.prepare(request)
            await response.write_eof()
        return response

    async def _relay_stream(self, call: Call, hop: Hop, request: web.Request,
                            upstream: Response, first: bytes, *, raw: bool = False
                            ) -> web.StreamResponse:
        """Relay a stream whose first byte has arrived; past this point there is no
        fallback. `raw`: a body that is not SSE (speech audio, a transcript as text), relayed
        as it comes with its content type; if it breaks, the connection is cut (there is no
        error event to send in audio)."""
        translator: anthropic.StreamTranslator | responses.ResponsesStreamTranslator | None = \
            None
        if call.api == "anthropic":
            translator = anthropic.StreamTranslator(call.client_model)
        elif _translated(call, hop):
            translator = responses.ResponsesStreamTranslator(call.original or {},
                                                             call.client_model)
        overhead = call.relaying(time.perf_counter())
        if call.feedback is not None and call.feedback.committed:
            # The wait's comments went out, and with them an event stream's headers.
            if raw:
                upstream.close()
                call.stream_broke(ErrorCode.BACKEND_FAILED.value)
                kind = upstream.content_type or "a body"
                return await call.feedback.end_with(stream_error_event(
                    call.api, f"backend {hop.name} answered {kind} instead of an event stream"))
            response = call.feedback.response
            assert response is not None
        else:
            headers = _answer_headers(call, hop.name)
            if raw:
                headers["Content-Type"] = upstream.headers.get("content-type",
                                                               "application/octet-stream")
                if "content-length" in upstream.headers:
                    headers["Content-Length"] = upstream.headers["content-length"]
            else:
                headers["Content-Type"] = SSE_CONTENT_TYPE
                headers["Cache-Control"] = "no-cache"
            headers["X-Accel-Buffering"] = "no"
            headers["X-Mushishi-Overhead-Ms"] = f"{overhead * 1000:.3f}"
            response = web.StreamResponse(status=upstream.status, headers=headers)
        idle = self.stream_idle_timeout_s
        complete = False
        try:
            if not response.prepared:
                await response.prepare(request)
            else:
                await response.write(f": backend {hop.name}\n\n".encode())
            chunk = first
            while chunk:
                if not raw and b'"usage"' in chunk:
                    call.count_tokens(chunk)
                if translator is not None:
                    try:
                        chunk = translator.feed(chunk)
                    except anthropic.UpstreamStreamError as error:
                        facts = error_facts(error.error)
                        raise _BrokenStream(
                            f"backend {hop.name} sent an error event"
                            + (f" ({facts})" if facts else ""),
                            for_caller=upstream_message({"error": error.error})) from None
                if chunk:
                    await response.write(chunk)
                try:
                    async with asyncio.timeout(idle):
                        chunk = await upstream.read_some()
                    self.state.heard_from(hop.name)
                except TimeoutError:
                    raise _BrokenStream(f"backend {hop.name} sent nothing for {idle:g}s"
                                        ) from None
                except (ResponseBroken, OSError) as error:
                    raise _BrokenStream(f"backend {hop.name} broke off the stream "
                                        f"({without_quoted(str(error))})") from None
            if translator is not None:
                tail = translator.finish()
                if tail:
                    await response.write(tail)
            complete = True
            await response.write_eof()
        except _BrokenStream as broken:
            call.stream_broke(ErrorCode.BACKEND_FAILED.value)
            log.warning("stream from %s failed after its first byte: %s; ended with an error "
                        "event, no [DONE]", hop.name, broken,
                        extra={"MUSHISHI_BACKEND": hop.name})
            self.kick_probe(hop.name)
            if raw:
                # Cut the connection: the caller sees a body shorter than promised (or no
                # last chunk), never a complete-looking one.
                if request.transport is not None:
                    request.transport.close()
                return response
            try:
                if isinstance(translator, responses.ResponsesStreamTranslator):
                    await response.write(translator.fail(broken.for_caller,
                                                         ErrorCode.BACKEND_FAILED.value))
                else:
                    await response.write(stream_error_event(call.api, broken.for_caller))
                await response.write_eof()
            except (ConnectionError, RuntimeError):
                pass
        except (ConnectionError, RuntimeError):
            call.client_disconnected()
        finally:
            if complete:
                upstream.release()
            else:
                upstream.close()  # the backend sees the connection drop and stops generating
        return response


def _translated(call: Call, hop: Hop) -> bool:
    """Whether `hop` gets a Responses `call` as chat, because it does not serve Responses
    itself (Anthropic calls are translated for every hop, and their path is chat's already)."""
    return call.api == "responses" and call.path.lstrip("/") not in hop.endpoints


def upstream_path(call: Call, hop: Hop) -> str:
    """The path below the hop's base that `call` is sent to."""
    if _translated(call, hop):
        return "/" + TRANSLATED_ENDPOINTS[call.path.lstrip("/")]
    return call.path


def _raw(call: Call, upstream: Response) -> bool:
    """A successful OpenAI-endpoint answer that is not JSON, nor the SSE stream the caller
    asked for: relayed as it comes, with its content type (speech audio, or speech as SSE
    with `stream_format`; a transcript as text, srt or vtt)."""
    return call.api == "openai" and 200 <= upstream.status < 300 and \
        upstream.content_type != "application/json" and not Relay._streams(call, upstream)


def _answer_headers(call: Call, backend: str) -> dict[str, str]:
    """X-Mushishi-* headers of an answer."""
    headers = {"X-Mushishi-Profile": call.profile.name, "X-Mushishi-Tier": call.profile.tier,
               "X-Mushishi-Backend": backend, "X-Request-Id": call.request_id}
    if call.fallbacks:
        headers["X-Mushishi-Fallbacks"] = str(call.fallbacks)
    if call.retries:
        headers["X-Mushishi-Retries"] = str(call.retries)
    return headers



def _header_line(name: str, value: str) -> bytes:
    if any(character in value for character in "\r\n\0"):
        raise ValueError(f"header {name} would carry a line break: {value!r}")
    return f"{name}: {value}\r\n".encode()


def _drop(upstream: Response | None) -> None:
    """Drop an answer that will not be relayed; its connection is not reused (its body may be
    unread or half read)."""
    if upstream is not None:
        upstream.close()


def _describe_status(status: int, body: bytes) -> tuple[Failure, str]:
    """Why a hop failed, from its status and error body: facts only (the body's message may
    quote the prompt, and the reason is logged and joins the final error's message)."""
    if upstream_code(parse_json(body)) == ErrorCode.BUDGET_EXHAUSTED.value:
        return Failure.BUDGET, f"budget exhausted ({status})"
    return Failure.STATUS, f"answered {status} ({body_facts(body)})"


def _failed(call: Call, hop: Hop, sent: float, kind: Failure, reason: str,
            status: int | None = None) -> HopFailure:
    call.attempt_failed(sent, time.perf_counter())
    log.warning("backend %s failed: %s", hop.name, reason,
                extra={"MUSHISHI_BACKEND": hop.name, "MUSHISHI_FAILURE": kind.value})
    return HopFailure(hop.name, kind, reason, status, cloud=not hop.local)


class _BrokenStream(Exception):
    """The upstream stream failed after its first byte: the message for the log, and what
    the caller's error event says (the backend's own words may follow, for the caller)."""

    def __init__(self, message: str, *, for_caller: str = "") -> None:
        super().__init__(message)
        self.for_caller = f"{message}: {for_caller}" if for_caller else message
