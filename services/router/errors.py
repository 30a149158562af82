"""The router's error wire format: stable codes, their HTTP status, and the error bodies.

Every error a caller sees carries one of the stable codes of DESIGN.md §5, in the shape of
the API it called: OpenAI `{"error": {"message", "type", "code", "param"}}`, or Anthropic
`{"type": "error", "error": {"type", "message", "code"}}` on `/v1/messages`. A stream that
breaks after its first byte ends with the same error as an SSE event.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from aiohttp import web


class ErrorCode(StrEnum):
    """The stable error codes of DESIGN.md §5 and §9, plus the two every HTTP server needs."""

    INVALID_API_KEY = "invalid_api_key"
    PROFILE_FORBIDDEN = "profile_forbidden"
    UNKNOWN_PROFILE = "unknown_profile"
    INVALID_REQUEST = "invalid_request"
    REQUEST_TOO_LARGE = "request_too_large"
    MODE_MISMATCH = "mode_mismatch"
    SOVEREIGN_BACKENDS_UNAVAILABLE = "sovereign_backends_unavailable"
    BACKEND_FAILED = "backend_failed"
    BUDGET_EXHAUSTED = "budget_exhausted"
    ALL_BACKENDS_FAILED = "all_backends_failed"
    REMOTE_MEDIA_REFUSED = "remote_media_refused"  # DESIGN.md §9
    ENDPOINT_UNSUPPORTED = "endpoint_unsupported"  # DESIGN.md §9
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"


STABLE_CODES: frozenset[str] = frozenset(code.value for code in ErrorCode)

# HTTP status and OpenAI error `type` of each code.
ERROR_HTTP: Mapping[ErrorCode, tuple[int, str]] = MappingProxyType({
    ErrorCode.INVALID_API_KEY: (401, "authentication_error"),
    ErrorCode.PROFILE_FORBIDDEN: (403, "permission_error"),
    ErrorCode.UNKNOWN_PROFILE: (404, "invalid_request_error"),
    ErrorCode.INVALID_REQUEST: (400, "invalid_request_error"),
    ErrorCode.REQUEST_TOO_LARGE: (413, "invalid_request_error"),
    ErrorCode.MODE_MISMATCH: (503, "service_unavailable"),
    ErrorCode.SOVEREIGN_BACKENDS_UNAVAILABLE: (503, "service_unavailable"),
    ErrorCode.BACKEND_FAILED: (502, "server_error"),
    ErrorCode.BUDGET_EXHAUSTED: (429, "rate_limit_error"),
    ErrorCode.ALL_BACKENDS_FAILED: (502, "server_error"),
    ErrorCode.REMOTE_MEDIA_REFUSED: (400, "invalid_request_error"),
    ErrorCode.ENDPOINT_UNSUPPORTED: (404, "invalid_request_error"),
    ErrorCode.NOT_FOUND: (404, "invalid_request_error"),
    ErrorCode.METHOD_NOT_ALLOWED: (405, "invalid_request_error"),
})

# The Anthropic error `type` of an HTTP status.
ANTHROPIC_ERROR_TYPES: Mapping[int, str] = MappingProxyType({
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 405: "invalid_request_error", 413: "request_too_large",
    415: "invalid_request_error", 429: "rate_limit_error", 502: "api_error",
    503: "overloaded_error",
})

# aiohttp's own HTTP errors, under a stable code (anything else is invalid_request, 400).
_HTTP_ERRORS: Mapping[int, tuple[ErrorCode, str]] = MappingProxyType({
    404: (ErrorCode.NOT_FOUND, "no such endpoint"),
    405: (ErrorCode.METHOD_NOT_ALLOWED, "method not allowed on this endpoint"),
    413: (ErrorCode.REQUEST_TOO_LARGE, "request too large"),
})

NO_ROUTE_HEADERS: Mapping[str, str] = MappingProxyType({
    "X-Mushishi-Profile": "none", "X-Mushishi-Tier": "none", "X-Mushishi-Backend": "none"})


class Rejection(Exception):
    """A request answered with a stable error code, before or after trying backends;
    `param` names the request's field at fault (a JSON path) where there is one."""

    def __init__(self, code: ErrorCode, message: str, status: int | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or ERROR_HTTP[code][0]
        self.param = param


def http_error_rejection(status: int, reason: str, method: str, path: str) -> Rejection:
    """One of aiohttp's own HTTP errors (404, 405, 413 …) as a Rejection."""
    code, message = _HTTP_ERRORS.get(status, (ErrorCode.INVALID_REQUEST, reason))
    return Rejection(code, f"{message}: {method} {path}",
                     status=status if status in _HTTP_ERRORS else 400)


def error_body(api: str, code: str, message: str, status: int,
               param: str | None = None) -> bytes:
    """An error in the caller's API shape; both shapes carry error.message/type/code, and
    `param` when it names a field (OpenAI's shape always has it, null when none)."""
    if api == "anthropic":
        kind = ANTHROPIC_ERROR_TYPES.get(status, "api_error")
        error = {"type": kind, "message": message, "code": code}
        if param is not None:
            error["param"] = param
        return json.dumps({"type": "error", "error": error}).encode()
    kind = ERROR_HTTP[ErrorCode(code)][1] if code in STABLE_CODES else "server_error"
    return json.dumps({"error": {"message": message, "type": kind, "code": code,
                                 "param": param}}).encode()


def error_response(api: str, rejection: Rejection, *, profile: str = "none",
                   tier: str = "none", request_id: str | None = None) -> web.Response:
    """The whole HTTP answer of a rejection, X-Mushishi-* headers included."""
    headers = {"Content-Type": "application/json", "X-Mushishi-Profile": profile,
               "X-Mushishi-Tier": tier, "X-Mushishi-Backend": "none"}
    if request_id:
        headers["X-Request-Id"] = request_id
    return web.Response(status=rejection.status, headers=headers,
                        body=error_body(api, rejection.code.value, rejection.message,
                                        rejection.status, rejection.param))


def stream_error_event(api: str, message: str,
                       code: str = ErrorCode.BACKEND_FAILED.value) -> bytes:
    """The SSE event that ends a stream broken after its first byte, or refused after its
    wait was announced with comment lines (`code`); no `[DONE]` follows."""
    if api == "anthropic":
        data = {"type": "error", "error": {"type": "api_error", "message": message,
                                           "code": code}}
        return f"event: error\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
    if api == "responses":  # relayed as is from a backend that serves Responses
        data = {"type": "error", "code": code, "message": message, "param": None,
                "sequence_number": 0}
        return f"event: error\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
    return b"data: " + json.dumps({"error": {"message": message, "type": "server_error",
                                             "code": code}}).encode() + b"\n\n"


def parse_json(body: bytes) -> Any:
    """`body` parsed as JSON, or None when it is not JSON."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def upstream_message(parsed: Any) -> str:
    """The message of an upstream's error body (OpenAI or plain shape), or ""."""
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict):
            return str(error.get("message", ""))
        if isinstance(error, str):
            return error
        if isinstance(parsed.get("message"), str):
            return parsed["message"]
    return ""


def upstream_code(parsed: Any) -> str:
    """The `error.code` of an upstream's error body, or ""."""
    error = parsed.get("error") if isinstance(parsed, dict) else None
    return str(error.get("code") or "") if isinstance(error, dict) else ""


def client_error_body(body: bytes, status: int) -> bytes:
    """A 4xx the request caused, as the backend said it, under the stable code invalid_request
    (the backend's own code is kept as `backend_code`)."""
    parsed = parse_json(body)
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        error = dict(error)
        error["backend_code"] = error.get("code")
        error["code"] = ErrorCode.INVALID_REQUEST.value
        error.setdefault("type", "invalid_request_error")
        error.setdefault("message", f"backend answered {status}")
        return json.dumps({**parsed, "error": error}).encode()
    message = upstream_message(parsed) or body[:500].decode("utf-8", "replace") or \
        f"backend answered {status}"
    return error_body("openai", ErrorCode.INVALID_REQUEST.value, message, status)
