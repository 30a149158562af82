"""One request on its way through the router: what was asked, and what happened to it.

`Call` is the request's record. `http_api` creates it; the chain policy (`policy`) and the
relay (`relay`) record what happens through its methods — a failed hop, a fallback, the
answer, its tokens, time that is not router overhead — and `accounting` reads it once the
request is over. No other module writes its fields.

`RequestBody` is what is sent to a hop; `JsonBody` is the one the OpenAI and Anthropic
endpoints have, `TranslatedBody` the Responses endpoint's (the request as is for a hop that
serves it, its chat translation for the others); `upload.Upload` is the multipart one (audio
transcriptions, image edits), which streams.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from mushishi.services.router.core import Hop, HopFailure, RouteProfile

if TYPE_CHECKING:
    from mushishi.services.router.feedback import WaitFeedback

# One encoder for every request (json.dumps with options builds a new one per call).
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
# OpenAI chat's usage names, and the Responses API's (relayed as is from a backend that
# serves it).
_PROMPT_TOKENS = re.compile(rb'"(?:prompt|input)_tokens"\s*:\s*(\d+)')
_COMPLETION_TOKENS = re.compile(rb'"(?:completion|output)_tokens"\s*:\s*(\d+)')


@dataclass(frozen=True, slots=True)
class Streamed:
    """A body sent to a hop as it is produced (an upload): `length` bytes, or chunked when
    None."""

    chunks: AsyncIterator[bytes | memoryview]
    length: int | None


class RequestBody(Protocol):
    """A request body as sent to a hop."""

    content_type: str

    def for_hop(self, hop: Hop) -> bytes | Streamed:
        """The body to send to `hop` (its served model name substituted where the API has
        one): bytes, or a stream (`upload.Upload`)."""
        ...


class JsonBody:
    """A JSON object body; `model` is set to each hop's served model, encoded once per model."""

    __slots__ = ("_encoded", "fields")
    content_type = "application/json"

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields
        self._encoded: dict[str, bytes] = {}

    def for_hop(self, hop: Hop) -> bytes:
        """The body with `model` set to the hop's served model name."""
        found = self._encoded.get(hop.model)
        if found is None:
            self.fields["model"] = hop.model
            found = _ENCODER.encode(self.fields).encode()
            self._encoded[hop.model] = found
        return found


class TranslatedBody:
    """A JSON body in the caller's API (`native`, for hops that serve `endpoint`) and its
    translation (for the others); either may be None when no hop of the chain needs it."""

    __slots__ = ("endpoint", "native", "translated")
    content_type = "application/json"

    def __init__(self, endpoint: str, native: dict[str, Any] | None,
                 translated: dict[str, Any] | None) -> None:
        self.endpoint = endpoint
        self.native = JsonBody(native) if native is not None else None
        self.translated = JsonBody(translated) if translated is not None else None

    def for_hop(self, hop: Hop) -> bytes:
        """The native body for a hop that serves the endpoint, else the translated one."""
        body = self.native if self.endpoint in hop.endpoints else self.translated
        assert body is not None, f"no body built for {hop.name}"
        return body.for_hop(hop)


class Call:
    """One request: what was asked (fixed), and what happened (recorded by the methods)."""

    __slots__ = ("api", "backend", "client_model", "completion_tokens", "failures",
                 "fallbacks", "feedback", "first_byte", "hops", "not_overhead_s", "original",
                 "outcome", "overhead_s", "path", "profile", "prompt_tokens", "request_id",
                 "retries", "started", "status", "stream")

    def __init__(self, *, request_id: str, api: str, path: str, profile: RouteProfile,
                 hops: tuple[Hop, ...], stream: bool, client_model: str,
                 started: float, original: dict[str, Any] | None = None,
                 feedback: WaitFeedback | None = None) -> None:
        self.request_id = request_id
        self.api = api  # "openai" | "anthropic" | "responses"
        # The endpoint below the base, e.g. "/chat/completions"; a hop that serves only chat
        # gets "/chat/completions" for a Responses call (`relay`).
        self.path = path
        # The caller's own request where an answer translated for it echoes its settings
        # (Responses), else None.
        self.original = original
        self.profile = profile
        self.hops = hops
        self.stream = stream
        self.client_model = client_model
        self.started = started  # perf_counter at arrival
        # A streamed request's comment lines while it waits (None: not streamed, or off).
        self.feedback = feedback
        # What happened, written only by the methods below.
        self.failures: list[HopFailure] = []
        self.fallbacks = 0
        self.retries = 0  # hops tried again after failing before their first byte
        self.backend = "none"  # the backend that answered
        self.status = 0  # the HTTP status the caller got
        self.outcome = ""  # success, client_error, client_disconnected, cancelled or a code
        self.first_byte: float | None = None  # perf_counter of the answer's first byte
        # Seconds queued, waiting for a GPU mode switch or spent on failed hops: not counted
        # as router overhead.
        self.not_overhead_s = 0.0
        # Seconds the router itself added (auth, parsing, routing, relaying).
        self.overhead_s = 0.0
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None

    # -- the chain policy ------------------------------------------------------------------
    @contextmanager
    def not_overhead(self) -> Iterator[None]:
        """Time spent inside the block (a queue, a switch) is not router overhead."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.not_overhead_s += time.perf_counter() - started

    def hop_failed(self, failure: HopFailure) -> None:
        """A hop did not answer (skipped, full, refused, or failed before the first byte)."""
        self.failures.append(failure)

    def fell_back(self) -> None:
        """A hop was abandoned for the next one."""
        self.fallbacks += 1

    def retried(self) -> None:
        """A hop that failed before its first byte is tried again for this request."""
        self.retries += 1

    def rejected(self, code: str, status: int) -> None:
        """The request ends with a stable error code."""
        self.outcome = code
        self.status = status

    def cancelled(self) -> None:
        """The client went away, or the router stopped, while the request was routed."""
        if self.outcome != "client_disconnected":
            self.outcome = "cancelled"

    # -- the relay -------------------------------------------------------------------------
    def sending(self, now: float) -> None:
        """The request leaves for a hop: the router's overhead so far."""
        self.overhead_s = now - self.started - self.not_overhead_s

    def attempt_failed(self, sent: float, now: float) -> None:
        """The attempt sent at `sent` failed: its time is not router overhead."""
        self.not_overhead_s += now - sent

    def first_byte_arrived(self, now: float) -> None:
        """The hop's answer began."""
        self.first_byte = now

    def answered(self, backend: str, status: int) -> None:
        """`backend` answers the caller with `status` (relayed from it)."""
        self.backend = backend
        self.status = status
        self.outcome = "success" if status < 400 else "client_error"

    def relaying(self, now: float) -> float:
        """The answer's headers leave for the caller: the overhead in total, in seconds."""
        self.overhead_s += now - (self.first_byte or now)
        return self.overhead_s

    def count_tokens(self, data: bytes) -> None:
        """Token counts from a backend's `usage` in `data` (the last one wins)."""
        prompt = _PROMPT_TOKENS.findall(data)
        if prompt:
            self.prompt_tokens = int(prompt[-1])
        completion = _COMPLETION_TOKENS.findall(data)
        if completion:
            self.completion_tokens = int(completion[-1])

    def stream_broke(self, code: str) -> None:
        """The answer's stream failed after its first byte (ended with an error event)."""
        self.outcome = code

    def client_disconnected(self) -> None:
        """The caller went away while the answer was relayed."""
        self.outcome = "client_disconnected"
