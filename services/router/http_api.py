"""The router's HTTP API (DESIGN.md §5): OpenAI and Anthropic endpoints, auth, limits, status.

A request is authenticated (API key or unix peer), its body read within the size limit and
checked, its profile resolved, and then handed to the chain policy (`policy.forward`);
`accounting` records how it ended. Every answer, errors included, carries
X-Mushishi-Profile, X-Mushishi-Tier and X-Mushishi-Backend ("none" when no backend
answered). Errors carry a stable code (`errors`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any
from weakref import WeakKeyDictionary

from aiohttp import web
from prometheus_client import CollectorRegistry

from mushishi.services.router import anthropic, responses
from mushishi.services.router.accounting import Accounting
from mushishi.services.router.call import Call, JsonBody, RequestBody, TranslatedBody
from mushishi.services.router.comfyui import ImageStore
from mushishi.services.router.core import (
    ROUTING_FIELDS,
    Hop,
    RouteProfile,
    RouteTable,
    pin_hops,
    serving_hops,
    split_model,
)
from mushishi.services.router.errors import (
    NO_ROUTE_HEADERS,
    ErrorCode,
    Rejection,
    error_response,
    http_error_rejection,
    stream_error_event,
)
from mushishi.services.router.feedback import WaitFeedback
from mushishi.services.router.media import remote_media
from mushishi.services.router.policy import Forwarding, forward
from mushishi.services.router.status_view import StatusView, Traffic
from mushishi.services.router.upload import (
    FormError,
    Upload,
    UploadAborted,
    UploadTooLarge,
    form_boundary,
)
from mushishi.shared.http_request import request_id_for, request_peer
from mushishi.shared.journal import bind_fields
from mushishi.shared.metrics import add_metrics_route
from mushishi.shared.peers import PeerCredentials

log = logging.getLogger("mushishi.router.request")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Endpoints whose streamed answers are event streams: a streamed request to one of them gets
# SSE comment lines while it waits (`feedback`). Images, speech and transcripts do not.
FEEDBACK_PATHS = frozenset({"/chat/completions", "/completions", "/responses"})


@dataclass(frozen=True, slots=True)
class Api:
    """Everything the HTTP API needs, built once by the wiring."""

    forwarding: Forwarding
    accounting: Accounting
    view: StatusView
    traffic: Traffic
    routes: Callable[[], RouteTable]  # the current table: a reload replaces it
    max_body_bytes: int
    registry: CollectorRegistry
    # The unit reading T1 prompts a unix peer runs in, or None (shared.t1_readers).
    reader_unit: Callable[[PeerCredentials], str | None]
    images: ImageStore  # images of comfyui backends answered as URLs
    # A streamed request that waits gets an SSE comment this often (router.wait_feedback_s;
    # 0: never).
    wait_feedback_s: float = 5.0
    # Per connection: the peer and its unit never change while it is open (SO_PEERCRED is
    # the connecting process's, and a process cannot leave its unit's cgroup).
    _peers: WeakKeyDictionary[Any, tuple[PeerCredentials | None, str | None]] = field(
        default_factory=WeakKeyDictionary)

    def peer_of(self, request: web.Request) -> tuple[PeerCredentials | None, str | None]:
        """The unix peer of `request` and the unit reading T1 prompts it runs in."""
        transport = request.transport
        known = self._peers.get(transport) if transport is not None else None
        if known is None:
            peer = request_peer(request)
            known = (peer, self.reader_unit(peer) if peer is not None else None)
            if transport is not None:
                self._peers[transport] = known
        return known


API_KEY = web.AppKey("mushishi_router_api", Api)

# The endpoints whose body is a multipart/form-data upload, streamed to the hop (upload.py).
FORM_ENDPOINTS = ("audio/transcriptions", "audio/translations", "images/edits")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# One decoder for every request (json.loads with an option builds a new one per call).
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _parse_json(raw: bytes) -> Any:
    """json.loads(raw) refusing NaN and Infinity, with the module-level decoder."""
    return _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))


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
    """Who is calling: the profiles they may use, how we know, and, for a unix peer that runs
    in a unit reading T1 prompts, that unit (it may use only sovereign profiles)."""

    __slots__ = ("how", "profiles", "reader")

    def __init__(self, profiles: frozenset[str], how: str, reader: str | None = None) -> None:
        self.profiles = profiles
        self.how = how
        self.reader = reader

    def may_use(self, profile: RouteProfile) -> bool:
        """Whether the caller may send work to `profile` (it is one of theirs, and sovereign
        when the caller reads T1 prompts)."""
        return profile.name in self.profiles and (self.reader is None or profile.sovereign)


def authenticate(table: RouteTable, request: web.Request,
                 peer_of: Callable[[web.Request], tuple[PeerCredentials | None, str | None]]
                 ) -> Caller:
    """The caller's profiles from `Authorization: Bearer`/`x-api-key`, or the unix peer uid;
    a unix peer is also identified by unit, whatever it presents (`Caller.reader`)."""
    peer, reader = peer_of(request)
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
            return Caller(profiles, "key", reader)
    if presented:
        raise Rejection(ErrorCode.INVALID_API_KEY, "invalid API key")
    if peer is not None:
        profiles = table.peers.get(peer.uid)
        if profiles is not None:
            return Caller(profiles, f"uid {peer.uid}", reader)
        raise Rejection(ErrorCode.INVALID_API_KEY, f"no API key, and unix peer uid {peer.uid} "
                                                   "is not in router.unix_peers")
    raise Rejection(ErrorCode.INVALID_API_KEY, "missing API key (Authorization: Bearer KEY "
                                               "or x-api-key: KEY)")


async def read_json(limit: int, request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, within `limit` bytes; else a Rejection."""
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
        body = _parse_json(raw)
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
    elif path == "/audio/speech":
        _require(isinstance(body.get("input"), str) and bool(body["input"]),
                 "`input` must be a non-empty string")
    elif path == "/images/generations":
        _require(isinstance(body.get("prompt"), str) and bool(body["prompt"]),
                 "`prompt` must be a non-empty string")
    elif path == "/rerank":
        _require(isinstance(body.get("query"), str), "`query` must be a string")
        _require(isinstance(body.get("documents"), list), "`documents` must be a list")
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


def validate_responses(body: dict[str, Any]) -> None:
    """The Responses fields the router relies on, and no request that needs stored state
    (the router keeps none): that one is refused naming its field."""
    _require(isinstance(body.get("input"), str | list), "`input` must be a string or a list "
                                                        "of items")
    if "stream" in body:
        _require(isinstance(body["stream"], bool), "`stream` must be true or false")
    if body.get("tools") is not None:
        _require(isinstance(body["tools"], list)
                 and all(isinstance(t, dict) for t in body["tools"]),
                 "`tools` must be a list of objects")
    refused = responses.refused_field(body)
    if refused is not None:
        field_name, why = refused
        raise Rejection(ErrorCode.INVALID_REQUEST, f"`{field_name}` is not supported: {why}",
                        param=field_name)


def resolve_profile(table: RouteTable, caller: Caller, body: dict[str, Any]
                    ) -> tuple[RouteProfile, tuple[Hop, ...], str]:
    """(profile, hops, client model) for the body's `model`, or a Rejection; the hops are the
    chain's, narrowed by a pin (`serving_hops` then keeps those that serve the endpoint)."""
    model = body.get("model")
    _require(isinstance(model, str) and bool(model), "`model` must name a profile "
                                                     "(or profile/model)")
    assert isinstance(model, str)
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
    if not caller.may_use(profile):
        raise Rejection(ErrorCode.PROFILE_FORBIDDEN, (
            f"the caller runs in {caller.reader}, which reads T1 prompts: it may use only T1 "
            f"and T1-strict profiles, not {name!r} ({profile.tier}), with a key or without"))
    hops = pin_hops(profile, pin)
    if hops is None:
        names = ", ".join(f"{hop.name} ({hop.model})" for hop in profile.hops)
        raise Rejection(ErrorCode.INVALID_REQUEST,
                        f"{pin!r} is not in profile {name!r}'s chain ({names}); a pin can only "
                        "narrow the chain")
    return profile, hops, model


def endpoint_unsupported(profile: RouteProfile, endpoint: str, *, pinned: bool = False
                         ) -> Rejection:
    """`404 endpoint_unsupported`: no hop of `profile`'s chain (or of the part a pin kept)
    serves `endpoint`; the message names the profile and what its chain serves."""
    served = ", ".join(sorted(profile.endpoints)) or "nothing"
    which = "the pinned part of the chain" if pinned else "the chain"
    return Rejection(ErrorCode.ENDPOINT_UNSUPPORTED, (
        f"no backend in {which} of profile {profile.name!r} serves /v1/{endpoint} (it serves "
        f"{served}); add a backend whose backends.<name>.endpoints lists {endpoint!r} to "
        f"profiles.{profile.name}.chain"))


def refuse_remote_media(api: str, path: str, profile: RouteProfile,
                        body: dict[str, Any]) -> None:
    """A T1/T1-strict request may not reference media the model server would fetch from
    elsewhere (media.py); the Rejection names the JSON path, never the URL (which may carry
    data, and the message is logged)."""
    where = remote_media(api, path, body, profile.media_prefixes)
    if where is None:
        return
    allowed = (f", or from a prefix in profiles.{profile.name}.local_media_prefixes"
               if profile.media_prefixes else "")
    raise Rejection(ErrorCode.REMOTE_MEDIA_REFUSED, (
        f"profile {profile.name!r} is {profile.tier}: {where} references remote media, which "
        f"the model server would fetch from outside the box; send it inline as a data: URI"
        f"{allowed}"), param=where)


def json_body(fields: dict[str, Any], hops: tuple[Hop, ...]) -> RequestBody:
    """The body of an OpenAI endpoint: the request as is (a hop's model set per hop)."""
    return JsonBody(fields)


def anthropic_body(fields: dict[str, Any], hops: tuple[Hop, ...]) -> RequestBody:
    """The body of a Messages request: its chat translation, for every hop."""
    return JsonBody(anthropic.messages_to_chat(fields))


def responses_body(fields: dict[str, Any], hops: tuple[Hop, ...]) -> RequestBody:
    """The body of a Responses request: as is for hops that serve `responses`, its chat
    translation for the others (built only when some hop needs it)."""
    native = any("responses" in hop.endpoints for hop in hops)
    translated = None
    if not all("responses" in hop.endpoints for hop in hops):
        translated = responses.responses_to_chat(fields)
        dropped = responses.dropped_reasoning(fields)
        if dropped:
            log.info("%d reasoning item(s) of the input left out for chat backends, which "
                     "cannot take them back", dropped)
    return TranslatedBody("responses", fields if native else None, translated)


async def _serve_call(api: Api, request: web.Request, kind: str, path: str,
                      make_body: Callable[[dict[str, Any], tuple[Hop, ...]], RequestBody],
                      validate: Callable[[dict[str, Any]], None], *,
                      form: bool = False) -> web.StreamResponse:
    """Serve one routed request: a JSON body (`make_body` builds what each hop is sent), or
    with `form` a multipart upload (its text fields are what `validate` and the routing see;
    the file is streamed, `upload`)."""
    started = time.perf_counter()
    request_id = request_id_for(request)
    call: Call | None = None
    upload: Upload | None = None
    try:
        table = api.routes()
        caller = authenticate(table, request, api.peer_of)
        if form:
            upload = open_upload(api.max_body_bytes, request)
            fields = await upload_fields(upload)
        else:
            fields = await read_json(api.max_body_bytes, request)
        validate(fields)
        profile, hops, client_model = resolve_profile(table, caller, fields)
        if profile.sovereign and not form:
            refuse_remote_media(kind, path, profile, fields)
        if not form and not ROUTING_FIELDS.isdisjoint(fields):
            for name in ROUTING_FIELDS:
                fields.pop(name, None)  # a client may never widen routing
        endpoint = path.lstrip("/")
        served = profile.serving(endpoint) if hops is profile.hops \
            else serving_hops(hops, endpoint)
        stream = fields.get("stream") in ("true", "True", "1") if form \
            else bool(fields.get("stream"))
        feedback = WaitFeedback(request, {
            "X-Mushishi-Profile": profile.name, "X-Mushishi-Tier": profile.tier,
            "X-Request-Id": request_id}, api.wait_feedback_s, started) \
            if stream and api.wait_feedback_s > 0 and path in FEEDBACK_PATHS else None
        call = Call(request_id=request_id, api=kind, path=path, profile=profile, hops=served,
                    stream=stream, client_model=client_model, started=started,
                    original=fields if kind == "responses" else None, feedback=feedback)
        if not served:
            raise endpoint_unsupported(profile, endpoint,
                                       pinned=len(hops) < len(profile.hops))
        with bind_fields(MUSHISHI_PROFILE=profile.name, MUSHISHI_TIER=profile.tier,
                         MUSHISHI_REQUEST_ID=request_id):
            try:
                body = upload if upload is not None else make_body(fields, served)
            except anthropic.TranslationError as error:
                raise Rejection(ErrorCode.INVALID_REQUEST, str(error)) from None
            api.traffic.in_flight += 1
            try:
                try:
                    response = await forward(api.forwarding, call, body, request)
                except UploadAborted:
                    assert upload is not None
                    raise upload_rejection(upload) from None
            except asyncio.CancelledError:
                # The client went away (or the drain timed out): the backend request was
                # cancelled with it; the record says so.
                call.cancelled()
                api.accounting.finish(call, "the client disconnected or the router stopped")
                raise
            finally:
                api.traffic.in_flight -= 1
            api.accounting.finish(call)
            return response
    except Rejection as rejection:
        if call is None:
            api.accounting.reject(request.method, request.path, rejection, request_id)
            return error_response(kind, rejection, request_id=request_id)
        call.rejected(rejection.code.value, rejection.status)
        with bind_fields(MUSHISHI_PROFILE=call.profile.name, MUSHISHI_TIER=call.profile.tier,
                         MUSHISHI_REQUEST_ID=request_id):
            api.accounting.finish(call, rejection.message)
        if call.feedback is not None and call.feedback.committed:
            # The wait was announced with comment lines: the answer is an event stream now.
            return await call.feedback.end_with(stream_error_event(
                kind, rejection.message, rejection.code.value))
        return error_response(kind, rejection, profile=call.profile.name,
                              tier=call.profile.tier, request_id=request_id)
    finally:
        if upload is not None:
            await upload.close()


def open_upload(limit: int, request: web.Request) -> Upload:
    """Start reading a multipart/form-data body into its spool, or a Rejection (too large,
    not a form)."""
    if request.content_length is not None and request.content_length > limit:
        raise Rejection(ErrorCode.REQUEST_TOO_LARGE,
                        f"body of {request.content_length} bytes exceeds router.max_body_bytes "
                        f"({limit})")
    header = request.headers.get("Content-Type", "")
    try:
        boundary = form_boundary(header)
    except FormError as error:
        raise Rejection(ErrorCode.INVALID_REQUEST, str(error), status=415) from None
    upload = Upload(request.content, header, boundary, request.content_length, limit)
    upload.start()
    return upload


async def upload_fields(upload: Upload) -> dict[str, Any]:
    """The form's text fields once routing can begin, or the Rejection of a bad upload."""
    try:
        fields: dict[str, Any] = await upload.fields()
    except (FormError, UploadTooLarge, UploadAborted):
        raise upload_rejection(upload) from None
    if not upload.scanner.file_parts:
        raise Rejection(ErrorCode.INVALID_REQUEST, "the form carries no file (a part with a "
                                                   "filename)")
    return fields


def upload_rejection(upload: Upload) -> Rejection:
    """What a caller whose upload failed is told (a too large or malformed form)."""
    error = upload.error
    if isinstance(error, UploadTooLarge):
        return Rejection(ErrorCode.REQUEST_TOO_LARGE, str(error))
    if isinstance(error, FormError):
        return Rejection(ErrorCode.INVALID_REQUEST, f"body is not a valid multipart form: "
                                                    f"{error}")
    return Rejection(ErrorCode.INVALID_REQUEST, str(error or "the upload broke off"))


def _openai(path: str) -> Handler:
    def validate(body: dict[str, Any]) -> None:
        validate_openai(path, body)

    async def handler(request: web.Request) -> web.StreamResponse:
        return await _serve_call(request.app[API_KEY], request, "openai", path, json_body,
                                 validate)
    return handler


def _validate_form(fields: dict[str, Any]) -> None:
    """A form's text fields: the routing needs `model`; the backend validates the rest."""
    if "stream" in fields:
        _require(fields["stream"] in ("true", "false", "True", "False", "1", "0"),
                 "`stream` must be true or false")


def _openai_form(path: str) -> Handler:
    """A multipart/form-data endpoint (audio transcriptions and translations, image edits)."""
    async def handler(request: web.Request) -> web.StreamResponse:
        return await _serve_call(request.app[API_KEY], request, "openai", path, json_body,
                                 _validate_form, form=True)
    return handler


async def messages(request: web.Request) -> web.StreamResponse:
    """POST /v1/messages: Anthropic Messages, translated to OpenAI chat for the backend."""
    return await _serve_call(request.app[API_KEY], request, "anthropic", "/chat/completions",
                             anthropic_body, validate_anthropic)


async def responses_endpoint(request: web.Request) -> web.StreamResponse:
    """POST /v1/responses: OpenAI Responses, as is to backends that serve them, translated to
    chat for the others; stateless."""
    return await _serve_call(request.app[API_KEY], request, "responses", "/responses",
                             responses_body, validate_responses)


async def count_tokens(request: web.Request) -> web.StreamResponse:
    """POST /v1/messages/count_tokens: a local estimate, no backend round trip."""
    api = request.app[API_KEY]
    request_id = request_id_for(request)
    try:
        table = api.routes()
        caller = authenticate(table, request, api.peer_of)
        body = await read_json(api.max_body_bytes, request)
        validate_anthropic(body, count_only=True)
        profile, _, _ = resolve_profile(table, caller, body)
    except Rejection as rejection:
        api.accounting.reject(request.method, request.path, rejection, request_id)
        return error_response("anthropic", rejection, request_id=request_id)
    return web.json_response({"input_tokens": anthropic.estimate_tokens(body)}, headers={
        "X-Mushishi-Profile": profile.name, "X-Mushishi-Tier": profile.tier,
        "X-Mushishi-Backend": "none", "X-Request-Id": request_id})


async def models(request: web.Request) -> web.StreamResponse:
    """GET /v1/models: the profiles the caller may use, as models, each with its tier and
    the endpoints its chain serves (`/v1/<endpoint>`)."""
    api = request.app[API_KEY]
    table = api.routes()
    try:
        caller = authenticate(table, request, api.peer_of)
    except Rejection as rejection:
        api.accounting.reject(request.method, request.path, rejection, None)
        return error_response("openai", rejection)
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "mushishi",
             "tier": table.profiles[name].tier,
             "endpoints": sorted(table.profiles[name].endpoints)}
            for name in sorted(caller.profiles)
            if name in table.profiles and caller.may_use(table.profiles[name])]
    return web.json_response({"object": "list", "data": data}, headers=NO_ROUTE_HEADERS)


async def image_file(request: web.Request) -> web.StreamResponse:
    """GET /v1/images/files/TOKEN: an image a comfyui backend made, answered as a URL
    (`response_format = "url"`); the unguessable token is the key, for an hour."""
    found = request.app[API_KEY].images.get(request.match_info["token"])
    if found is None:
        return error_response("openai", Rejection(
            ErrorCode.NOT_FOUND, "no such image (image URLs last an hour)"))
    content_type, data = found
    return web.Response(body=data, content_type=content_type, headers={
        **NO_ROUTE_HEADERS, "Cache-Control": "private, max-age=3600"})


async def health(request: web.Request) -> web.StreamResponse:
    """GET /health: the process answers (liveness)."""
    return web.json_response({"status": "ok"}, headers=NO_ROUTE_HEADERS)


async def ready(request: web.Request) -> web.StreamResponse:
    """GET /ready: 200 when at least one profile can be served now; sovereignty included."""
    body = request.app[API_KEY].view.readiness()
    return web.json_response(body, status=200 if body["ready"] else 503,
                             headers=NO_ROUTE_HEADERS)


async def status(request: web.Request) -> web.StreamResponse:
    """GET /status: backends, profiles, sovereignty, cloud share (no key from loopback/unix)."""
    api = request.app[API_KEY]
    if not _is_loopback_or_unix(request):
        try:
            authenticate(api.routes(), request, api.peer_of)
        except Rejection as rejection:
            return error_response("openai", rejection)
    return web.json_response(api.view.status(), headers=NO_ROUTE_HEADERS,
                             dumps=lambda data: json.dumps(data, ensure_ascii=False))


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own HTTP errors (404, 405, 413 …) in the stable JSON shape."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        kind = "anthropic" if request.path.startswith("/v1/messages") else "openai"
        response = error_response(kind, http_error_rejection(error.status, error.reason,
                                                             request.method, request.path))
        if error.status == 405 and "Allow" in error.headers:
            response.headers["Allow"] = error.headers["Allow"]
        return response


async def _default_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every response carries the X-Mushishi-* headers (`none` where they do not apply)."""
    for name, value in NO_ROUTE_HEADERS.items():
        response.headers.setdefault(name, value)


def build_app(api: Api) -> web.Application:
    """The aiohttp application of the router."""
    app = web.Application(client_max_size=api.max_body_bytes, middlewares=[errors_middleware])
    app.on_response_prepare.append(_default_headers)
    app[API_KEY] = api
    app.router.add_post("/v1/chat/completions", _openai("/chat/completions"))
    app.router.add_post("/v1/completions", _openai("/completions"))
    app.router.add_post("/v1/embeddings", _openai("/embeddings"))
    app.router.add_post("/v1/responses", responses_endpoint)
    # DESIGN.md §9: speech, images and rerank, to the backends that declare them.
    for path in FORM_ENDPOINTS:
        app.router.add_post(f"/v1/{path}", _openai_form(f"/{path}"))
    for path in ("audio/speech", "images/generations", "rerank"):
        app.router.add_post(f"/v1/{path}", _openai(f"/{path}"))
    app.router.add_post("/rerank", _openai("/rerank"))  # as llama-server and Jina serve it
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/images/files/{token}", image_file)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/status", status)
    add_metrics_route(app, api.registry)
    return app
