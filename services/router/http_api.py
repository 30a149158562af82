"""The router's HTTP API (DESIGN.md §5): OpenAI and Anthropic endpoints, auth, limits, status.

Every answer, errors included, carries X-Mushishi-Profile, X-Mushishi-Tier and
X-Mushishi-Backend ("none" when no backend answered). Errors carry a stable code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from ipaddress import ip_address
from typing import TYPE_CHECKING, Any

from aiohttp import web

from mushishi.services.router import anthropic
from mushishi.services.router.core import (
    ROUTING_FIELDS,
    ErrorCode,
    pin_hops,
    split_model,
)
from mushishi.services.router.dispatch import Call, Rejection, error_body, forward
from mushishi.shared.http_request import peer_uid, request_id_for
from mushishi.shared.journal import bind_fields
from mushishi.shared.metrics import add_metrics_route

if TYPE_CHECKING:
    from mushishi.services.router.app import Router

log = logging.getLogger("mushishi.router.request")

ROUTER_KEY = web.AppKey("mushishi_router", object)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _router(request: web.Request) -> Router:
    return request.app[ROUTER_KEY]  # type: ignore[return-value]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _is_loopback_or_unix(request: web.Request) -> bool:
    transport = request.transport
    if transport is None:
        return False
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_UNIX:
        return True
    peer = transport.get_extra_info("peername")
    try:
        return bool(peer) and ip_address(str(peer[0]).split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class Caller:
    """Who is calling: the profiles they may use, and how we know."""

    __slots__ = ("how", "profiles")

    def __init__(self, profiles: frozenset[str], how: str) -> None:
        self.profiles = profiles
        self.how = how


def authenticate(router: Router, request: web.Request) -> Caller:
    """The caller's profiles from `Authorization: Bearer`/`x-api-key`, or the unix peer uid."""
    table = router.table
    presented = []
    authorization = request.headers.get("Authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            presented.append(token.strip())
    api_key = request.headers.get("x-api-key")
    if api_key:
        presented.append(api_key.strip())
    for key in presented:
        profiles = table.profiles_for_key(key)
        if profiles is not None:
            return Caller(profiles, "key")
    if presented:
        raise Rejection(ErrorCode.INVALID_API_KEY, "invalid API key")
    uid = peer_uid(request)
    if uid is not None:
        profiles = table.peers.get(uid)
        if profiles is not None:
            return Caller(profiles, f"uid {uid}")
        raise Rejection(ErrorCode.INVALID_API_KEY, f"no API key, and unix peer uid {uid} is not "
                                                   "in router.unix_peers")
    raise Rejection(ErrorCode.INVALID_API_KEY, "missing API key (Authorization: Bearer KEY "
                                               "or x-api-key: KEY)")


async def read_json(router: Router, request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, within the size limit; else a Rejection."""
    limit = router.settings.router.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise Rejection(ErrorCode.REQUEST_TOO_LARGE,
                        f"body of {request.content_length} bytes exceeds router.max_body_bytes "
                        f"({limit})")
    if request.content_type != "application/json":
        raise Rejection(ErrorCode.INVALID_REQUEST,
                        f"Content-Type must be application/json (got "
                        f"{request.content_type or 'none'})", status=415)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise Rejection(ErrorCode.REQUEST_TOO_LARGE,
                        f"body exceeds router.max_body_bytes ({limit})") from None
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as error:
        message = str(error) if isinstance(error, ValueError) else "nested too deeply"
        raise Rejection(ErrorCode.INVALID_REQUEST, f"body is not valid JSON: {message}"
                        ) from None
    if not isinstance(body, dict):
        raise Rejection(ErrorCode.INVALID_REQUEST, "body must be a JSON object")
    return body


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise Rejection(ErrorCode.INVALID_REQUEST, message)


def validate_openai(path: str, body: dict[str, Any]) -> None:
    """The fields the router itself relies on; the backend validates the rest."""
    if path == "/chat/completions":
        messages = body.get("messages")
        _require(isinstance(messages, list) and len(messages) > 0,
                 "`messages` must be a non-empty list")
        for index, message in enumerate(messages):
            _require(isinstance(message, dict) and isinstance(message.get("role"), str),
                     f"messages[{index}] must be an object with a `role` string")
    elif path == "/completions":
        _require(isinstance(body.get("prompt"), str | list), "`prompt` must be a string or list")
    elif path == "/embeddings":
        _require(isinstance(body.get("input"), str | list), "`input` must be a string or list")
    if "stream" in body:
        _require(isinstance(body["stream"], bool), "`stream` must be true or false")
    if body.get("tools") is not None:
        tools = body["tools"]
        _require(isinstance(tools, list) and all(isinstance(t, dict) for t in tools),
                 "`tools` must be a list of objects")


def validate_anthropic(body: dict[str, Any], *, count_only: bool = False) -> None:
    """The Messages fields translation relies on."""
    messages = body.get("messages")
    _require(isinstance(messages, list) and len(messages) > 0,
             "`messages` must be a non-empty list")
    for index, message in enumerate(messages):
        _require(isinstance(message, dict), f"messages[{index}] must be an object")
        _require(message.get("role") in ("user", "assistant"),
                 f"messages[{index}].role must be user or assistant")
        _require(isinstance(message.get("content"), str | list),
                 f"messages[{index}].content must be a string or a list of blocks")
    if not count_only:
        tokens = body.get("max_tokens")
        _require(isinstance(tokens, int) and not isinstance(tokens, bool) and tokens > 0,
                 "`max_tokens` must be a positive integer")
    if "stream" in body:
        _require(isinstance(body["stream"], bool), "`stream` must be true or false")
    if "system" in body:
        _require(isinstance(body["system"], str | list), "`system` must be a string or list")
    if "tools" in body:
        _require(isinstance(body["tools"], list)
                 and all(isinstance(t, dict) for t in body["tools"]),
                 "`tools` must be a list of objects")
    if "tool_choice" in body:
        _require(isinstance(body["tool_choice"], dict), "`tool_choice` must be an object")


def resolve_profile(router: Router, caller: Caller, body: dict[str, Any]) -> tuple[Any, Any, str]:
    """(profile, hops, client model) for the body's `model`, or a Rejection."""
    model = body.get("model")
    _require(isinstance(model, str) and bool(model), "`model` must name a profile "
                                                     "(or profile/model)")
    assert isinstance(model, str)
    table = router.table
    name, pin = split_model(model, table.profiles)
    profile = table.profiles.get(name)
    if profile is None:
        allowed = ", ".join(sorted(caller.profiles)) or "none"
        raise Rejection(ErrorCode.UNKNOWN_PROFILE,
                        f"unknown profile {name!r}: `model` names a profile (yours: {allowed})")
    if name not in caller.profiles:
        raise Rejection(ErrorCode.PROFILE_FORBIDDEN,
                        f"this {'key' if caller.how == 'key' else caller.how} may not use "
                        f"profile {name!r}")
    hops = pin_hops(profile, pin)
    if hops is None:
        names = ", ".join(f"{hop.name} ({hop.model})" for hop in profile.hops)
        raise Rejection(ErrorCode.INVALID_REQUEST,
                        f"{pin!r} is not in profile {name!r}'s chain ({names}); a pin can only "
                        "narrow the chain")
    return profile, hops, model


def _error_response(router: Router, api: str, rejection: Rejection, *, profile: str = "none",
                    tier: str = "none", backend: str = "none",
                    request_id: str | None = None) -> web.Response:
    headers = {
        "Content-Type": "application/json",
        "X-Mushishi-Profile": profile,
        "X-Mushishi-Tier": tier,
        "X-Mushishi-Backend": backend,
    }
    if request_id:
        headers["X-Request-Id"] = request_id
    return web.Response(status=rejection.status, headers=headers,
                        body=error_body(api, rejection.code.value, rejection.message,
                                        rejection.status))


def _prepare_call(router: Router, api: str, path: str, body: dict[str, Any], caller: Caller,
                  request_id: str, started: float) -> Call:
    profile, hops, client_model = resolve_profile(router, caller, body)
    for name in ROUTING_FIELDS:
        body.pop(name, None)  # a client may never widen routing
    stream = bool(body.get("stream"))
    return Call(request_id=request_id, api=api, path=path, profile=profile, hops=hops,
                body=body, stream=stream, client_model=client_model, started=started)


async def _serve_call(router: Router, request: web.Request, api: str, path: str,
                      translate: Callable[[dict[str, Any]], dict[str, Any]] | None,
                      validate: Callable[[dict[str, Any]], None]) -> web.StreamResponse:
    started = time.perf_counter()
    request_id = request_id_for(request)
    call: Call | None = None
    try:
        caller = authenticate(router, request)
        body = await read_json(router, request)
        validate(body)
        call = _prepare_call(router, api, path, body, caller, request_id, started)
        if translate is not None:
            try:
                call.body = translate(body)
            except anthropic.TranslationError as error:
                raise Rejection(ErrorCode.INVALID_REQUEST, str(error)) from None
        with bind_fields(MUSHISHI_PROFILE=call.profile.name, MUSHISHI_TIER=call.profile.tier,
                         MUSHISHI_REQUEST_ID=request_id):
            router.in_flight += 1
            try:
                response = await forward(router, call, request)
            except asyncio.CancelledError:
                # The client went away (or the drain timed out): the backend request was
                # cancelled with it; the record says so.
                call.outcome = call.outcome if call.outcome == "client_disconnected" else \
                    "cancelled"
                router.finish(call, "the client disconnected or the router stopped")
                raise
            finally:
                router.in_flight -= 1
            router.finish(call)
            return response
    except Rejection as rejection:
        profile = call.profile.name if call else "none"
        tier = call.profile.tier if call else "none"
        if call is not None:
            call.outcome = rejection.code.value
            call.status = rejection.status
            with bind_fields(MUSHISHI_PROFILE=profile, MUSHISHI_TIER=tier,
                             MUSHISHI_REQUEST_ID=request_id):
                router.finish(call, rejection.message)
        else:
            router.reject(request, rejection, request_id)
        return _error_response(router, api, rejection, profile=profile, tier=tier,
                               request_id=request_id)


def _openai(path: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await _serve_call(_router(request), request, "openai", path, None,
                                 lambda body: validate_openai(path, body))
    return handler


async def messages(request: web.Request) -> web.StreamResponse:
    """POST /v1/messages: Anthropic Messages, translated to OpenAI chat for the backend."""
    return await _serve_call(_router(request), request, "anthropic", "/chat/completions",
                             anthropic.messages_to_chat, validate_anthropic)


async def count_tokens(request: web.Request) -> web.StreamResponse:
    """POST /v1/messages/count_tokens: a local estimate, no backend round trip."""
    router = _router(request)
    request_id = request_id_for(request)
    try:
        caller = authenticate(router, request)
        body = await read_json(router, request)
        validate_anthropic(body, count_only=True)
        profile, _, _ = resolve_profile(router, caller, body)
    except Rejection as rejection:
        router.reject(request, rejection, request_id)
        return _error_response(router, "anthropic", rejection, request_id=request_id)
    return web.json_response({"input_tokens": anthropic.estimate_tokens(body)}, headers={
        "X-Mushishi-Profile": profile.name, "X-Mushishi-Tier": profile.tier,
        "X-Mushishi-Backend": "none", "X-Request-Id": request_id})


async def models(request: web.Request) -> web.StreamResponse:
    """GET /v1/models: the profiles the caller may use, as models."""
    router = _router(request)
    try:
        caller = authenticate(router, request)
    except Rejection as rejection:
        router.reject(request, rejection, None)
        return _error_response(router, "openai", rejection)
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "mushishi",
             "tier": router.table.profiles[name].tier}
            for name in sorted(caller.profiles) if name in router.table.profiles]
    return web.json_response({"object": "list", "data": data}, headers={
        "X-Mushishi-Profile": "none", "X-Mushishi-Tier": "none", "X-Mushishi-Backend": "none"})


_PLAIN = {"X-Mushishi-Profile": "none", "X-Mushishi-Tier": "none", "X-Mushishi-Backend": "none"}


async def health(request: web.Request) -> web.StreamResponse:
    """GET /health: the process answers (liveness)."""
    return web.json_response({"status": "ok"}, headers=_PLAIN)


async def ready(request: web.Request) -> web.StreamResponse:
    """GET /ready: 200 when at least one profile can be served now; sovereignty included."""
    router = _router(request)
    body = router.readiness()
    return web.json_response(body, status=200 if body["ready"] else 503, headers=_PLAIN)


async def status(request: web.Request) -> web.StreamResponse:
    """GET /status: backends, profiles, sovereignty, cloud share (no key from loopback/unix)."""
    router = _router(request)
    if not _is_loopback_or_unix(request):
        try:
            authenticate(router, request)
        except Rejection as rejection:
            return _error_response(router, "openai", rejection)
    return web.json_response(router.status(), headers=_PLAIN,
                             dumps=lambda data: json.dumps(data, ensure_ascii=False))


_HTTP_ERRORS = {
    404: (ErrorCode.NOT_FOUND, "no such endpoint"),
    405: (ErrorCode.METHOD_NOT_ALLOWED, "method not allowed on this endpoint"),
    413: (ErrorCode.REQUEST_TOO_LARGE, "request too large"),
}


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own HTTP errors (404, 405, 413 …) in the stable JSON shape."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        code, message = _HTTP_ERRORS.get(error.status, (ErrorCode.INVALID_REQUEST,
                                                        error.reason))
        api = "anthropic" if request.path.startswith("/v1/messages") else "openai"
        rejection = Rejection(code, f"{message}: {request.method} {request.path}",
                              status=error.status if error.status in (404, 405, 413) else 400)
        response = _error_response(_router(request), api, rejection)
        if error.status == 405 and "Allow" in error.headers:
            response.headers["Allow"] = error.headers["Allow"]
        return response


async def _default_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every response carries the X-Mushishi-* headers (`none` where they do not apply)."""
    for name, value in _PLAIN.items():
        response.headers.setdefault(name, value)


def build_app(router: Router) -> web.Application:
    """The aiohttp application of the router."""
    app = web.Application(client_max_size=router.settings.router.max_body_bytes,
                          middlewares=[errors_middleware])
    app.on_response_prepare.append(_default_headers)
    app[ROUTER_KEY] = router
    app.router.add_post("/v1/chat/completions", _openai("/chat/completions"))
    app.router.add_post("/v1/completions", _openai("/completions"))
    app.router.add_post("/v1/embeddings", _openai("/embeddings"))
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/status", status)
    add_metrics_route(app, router.registry)
    return app
