"""mushishi-egress decisions as pure functions over plain data (no I/O, no clock).

* `compile_policy`: the egress's own reading of the config: which profiles may use which
  cloud backends. `admit` re-checks every request against it, whatever the router sent.
* `budget_refusal`: is a provider's daily budget spent (requests, tokens, cost)?
* `Breaker`: consecutive failures -> cooldown; a 429's Retry-After -> cooldown.
* usage: from a JSON answer or from SSE events (`SseSplitter`), and its cost.
* `prepare_body`: the body sent to the provider (configured model, extra_body, stream usage).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from mushishi.shared.config.router import SOVEREIGN_TIERS
from mushishi.shared.locality import AddressError, backend_locality, parse_backend_url

if TYPE_CHECKING:
    from mushishi.shared.config.settings import MushishiSettings

# Multipart uploads, sent to the provider as the router sent them (DESIGN.md §9).
FORM_PATHS = ("/v1/audio/transcriptions", "/v1/audio/translations", "/v1/images/edits")
API_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/audio/speech",
             "/v1/images/generations", "/v1/rerank", *FORM_PATHS)
STREAMING_PATHS = ("/v1/chat/completions", "/v1/completions")
# Endpoints whose answers may be other than JSON (speech audio or SSE, text/srt/vtt
# transcripts): relayed as they arrive rather than read whole.
RAW_ANSWER_PATHS = ("/v1/audio/speech", *FORM_PATHS)


class Refusal(StrEnum):
    """Why the egress refused a request on sovereignty grounds (the metric's `reason`)."""

    MISSING_HEADERS = "missing_headers"
    UNKNOWN_PROFILE = "unknown_profile"
    SOVEREIGN_TIER = "sovereign_tier"
    TIER_MISMATCH = "tier_mismatch"
    UNKNOWN_BACKEND = "unknown_backend"
    NOT_CLOUD = "not_cloud"
    NOT_IN_CHAIN = "not_in_chain"


@dataclass(frozen=True, slots=True)
class Price:
    """Currency units per million tokens."""

    prompt_per_million: float
    completion_per_million: float


@dataclass(frozen=True, slots=True)
class Limits:
    """A provider's daily budget; None is unlimited."""

    requests: int | None = None
    tokens: int | None = None
    cost: float | None = None
    audio_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class CloudBackend:
    """A cloud provider as the egress uses it."""

    name: str
    url: str
    base: str  # scheme://host:port/base, no trailing slash
    model: str
    credential: str | None
    limits: Limits
    price: Price | None
    connect_timeout_s: float
    first_byte_timeout_s: float
    stream_idle_timeout_s: float
    cooldown_after_failures: int
    cooldown_s: float
    extra_body: Mapping[str, Any]
    extra_headers: Mapping[str, str]
    stream_usage: bool


@dataclass(frozen=True, slots=True)
class PolicyProfile:
    """A profile's tier and chain, from the egress's own reading of the config."""

    name: str
    tier: str
    chain: frozenset[str]


@dataclass(frozen=True)
class Policy:
    """Everything `admit` needs, built once per (re)load."""

    profiles: Mapping[str, PolicyProfile]
    cloud: Mapping[str, CloudBackend]
    local: Mapping[str, str]  # local backend name -> why it is local


def compile_policy(settings: MushishiSettings) -> Policy:
    """The egress's own view of the config: cloud backends (by address) and profiles."""
    router = settings.router
    egress = settings.egress
    cloud: dict[str, CloudBackend] = {}
    local: dict[str, str] = {}
    for name, backend in settings.backends.items():
        verdict = backend_locality(backend.url, router.local_networks, router.local_hosts)
        if verdict.local:
            local[name] = verdict.reason
            continue
        try:
            address = parse_backend_url(backend.url)
        except AddressError as error:  # refused by the config check already
            local[name] = f"unusable URL: {error}"
            continue
        budget = backend.budget
        price = backend.price
        cloud[name] = CloudBackend(
            name=name,
            url=backend.url,
            base=address.origin + address.base_path,
            model=backend.model,
            credential=backend.api_key_credential,
            limits=Limits(budget.requests_per_day, budget.tokens_per_day, budget.cost_per_day,
                          budget.audio_seconds_per_day)
            if budget is not None else Limits(),
            price=Price(price.prompt_per_million, price.completion_per_million)
            if price is not None else None,
            connect_timeout_s=backend.connect_timeout_s or egress.connect_timeout_s,
            first_byte_timeout_s=backend.first_byte_timeout_s or router.first_byte_timeout_s,
            stream_idle_timeout_s=router.stream_idle_timeout_s,
            cooldown_after_failures=backend.cooldown_after_failures
            or egress.cooldown_after_failures,
            cooldown_s=backend.cooldown_s or egress.cooldown_s,
            extra_body=MappingProxyType(dict(backend.extra_body)),
            extra_headers=MappingProxyType(dict(backend.extra_headers)),
            stream_usage=backend.stream_usage,
        )
    profiles = {name: PolicyProfile(name, profile.tier, frozenset(profile.chain))
                for name, profile in settings.profiles.items()}
    return Policy(MappingProxyType(profiles), MappingProxyType(cloud), MappingProxyType(local))


@dataclass(frozen=True, slots=True)
class Admission:
    """A request the egress may send: its profile, tier (from the config) and provider."""

    profile: str
    tier: str
    backend: CloudBackend


@dataclass(frozen=True, slots=True)
class Refused:
    """A request the egress will not send, and why (never retried, always counted)."""

    reason: Refusal
    message: str


def admit(policy: Policy, profile: str | None, tier: str | None,
          backend: str | None) -> Admission | Refused:
    """Re-check a request against the egress's own config: only a T2/T3 profile whose chain
    names this cloud backend may use it. The router's headers are claims, never trusted."""
    if not profile or not tier or not backend:
        return Refused(Refusal.MISSING_HEADERS, "X-Mushishi-Profile, X-Mushishi-Tier and "
                                                "X-Mushishi-Backend are required")
    configured = policy.profiles.get(profile)
    if configured is None:
        return Refused(Refusal.UNKNOWN_PROFILE, f"no profile {profile!r} in the egress's config")
    if configured.tier in SOVEREIGN_TIERS:
        return Refused(Refusal.SOVEREIGN_TIER, f"profile {profile!r} is {configured.tier}: its "
                                               "work never leaves the machine")
    if tier != configured.tier:
        return Refused(Refusal.TIER_MISMATCH, f"the request says tier {tier!r} but profile "
                                              f"{profile!r} is {configured.tier}")
    if backend in policy.local:
        return Refused(Refusal.NOT_CLOUD, f"backend {backend!r} is local "
                                          f"({policy.local[backend]}); the egress only reaches "
                                          "cloud backends")
    provider = policy.cloud.get(backend)
    if provider is None:
        return Refused(Refusal.UNKNOWN_BACKEND, f"no backend {backend!r} in the egress's config")
    if backend not in configured.chain:
        return Refused(Refusal.NOT_IN_CHAIN, f"backend {backend!r} is not in profile "
                                             f"{profile!r}'s chain")
    return Admission(profile, configured.tier, provider)


# -- budgets -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one answer; `estimated` when the provider did not say. `audio_seconds`:
    the audio a transcription or translation covered, where the provider reports it."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False
    audio_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class DayTotals:
    """What one provider used on one UTC day, settled requests only."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    estimated: int = 0  # requests counted from estimates (no usage: a crash, a cut stream)
    audio_seconds: float = 0.0  # of transcriptions and translations, as the providers said

    @property
    def tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def plus(self, usage: Usage, cost: float) -> DayTotals:
        """These totals with one more settled request."""
        return DayTotals(self.requests + 1, self.prompt_tokens + usage.prompt_tokens,
                         self.completion_tokens + usage.completion_tokens, self.cost + cost,
                         self.estimated + (1 if usage.estimated else 0),
                         self.audio_seconds + usage.audio_seconds)


@dataclass(frozen=True, slots=True)
class InFlight:
    """Reservations not settled yet: requests sent, usage not known."""

    requests: int = 0
    prompt_estimate: int = 0


def budget_refusal(limits: Limits, used: DayTotals, in_flight: InFlight) -> str | None:
    """Why one more request would exceed the day's budget, or None when it fits.

    Requests in flight count against the request budget (each will be counted) and their
    estimated prompt tokens against the token budget; a budget can still be overshot by the
    completions of requests in flight when it runs out.
    """
    if limits.requests is not None and used.requests + in_flight.requests >= limits.requests:
        return (f"{used.requests + in_flight.requests} of {limits.requests} requests used today "
                "(budget.requests_per_day)")
    if limits.tokens is not None and used.tokens + in_flight.prompt_estimate >= limits.tokens:
        return (f"{used.tokens} of {limits.tokens} tokens used today "
                "(budget.tokens_per_day)")
    if limits.cost is not None and used.cost >= limits.cost:
        return f"{used.cost:.4f} of {limits.cost:g} spent today (budget.cost_per_day)"
    if limits.audio_seconds is not None and used.audio_seconds >= limits.audio_seconds:
        return (f"{used.audio_seconds:.0f} of {limits.audio_seconds:g} seconds of audio "
                "transcribed today (budget.audio_seconds_per_day)")
    return None


def cost_of(usage: Usage, price: Price | None) -> float:
    """The spend of one answer (0 when no price is configured)."""
    if price is None:
        return 0.0
    return (usage.prompt_tokens * price.prompt_per_million
            + usage.completion_tokens * price.completion_per_million) / 1_000_000


def utc_day(now: datetime) -> str:
    """The UTC date budgets are counted by (YYYY-MM-DD)."""
    return now.astimezone(UTC).date().isoformat()


# -- cooldowns ---------------------------------------------------------------------------

@dataclass
class Breaker:
    """A cloud provider's cooldown: `after` consecutive failures skip it for `cooldown_s`; a
    429 with Retry-After skips it for that long. Any success closes it again."""

    after: int
    cooldown_s: float
    failures: int = 0
    until: datetime | None = None
    reason: str = ""

    def blocked(self, now: datetime) -> datetime | None:
        """The end of the cooldown in force at `now`, or None."""
        if self.until is not None and now < self.until:
            return self.until
        return None

    def success(self) -> None:
        """An answer arrived: reset the failure count."""
        self.failures = 0

    def failure(self, now: datetime, why: str) -> datetime | None:
        """Count a failure; the new cooldown's end when this one starts it."""
        self.failures += 1
        if self.failures < self.after:
            return None
        self.failures = 0
        return self._cool(now.timestamp() + self.cooldown_s,
                          f"{self.after} consecutive failures, the last: {why}")

    def rate_limited(self, now: datetime, retry_after_s: float | None,
                     why: str) -> datetime | None:
        """A 429: with Retry-After, cool down for exactly that long; else a failure."""
        if retry_after_s is None:
            return self.failure(now, why)
        self.failures = 0
        return self._cool(now.timestamp() + retry_after_s, f"{why}; Retry-After "
                                                           f"{retry_after_s:g}s")

    def restore(self, until: datetime, reason: str) -> None:
        """A cooldown read back from the ledger after a restart."""
        self.until, self.reason = until, reason

    def _cool(self, until_ts: float, reason: str) -> datetime:
        until = datetime.fromtimestamp(until_ts, UTC)
        if self.until is None or until > self.until:  # never shorten one in force
            self.until = until
            self.reason = reason
        return self.until


def parse_retry_after(value: str | None, now: datetime, cap_s: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), capped."""
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), cap_s)


# -- request and usage -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Prepared:
    """The body for the provider and what the relay must know about it."""

    body: bytes
    stream: bool
    strip_usage: bool  # we asked for stream usage; the caller did not
    prompt_estimate: int


def estimate_tokens(text_bytes: int) -> int:
    """A rough token count from UTF-8 bytes (4 bytes a token), at least 1."""
    return max(1, text_bytes // 4)


def prepare_body(path: str, body: dict[str, Any], backend: CloudBackend) -> Prepared:
    """The request as the provider gets it: the configured model (whatever the router sent),
    extra_body over the caller's fields, and stream usage asked for where it is missing."""
    out = dict(body)
    out.update(backend.extra_body)
    out["model"] = backend.model
    stream = bool(out.get("stream")) and path in STREAMING_PATHS
    strip_usage = False
    if stream and backend.stream_usage:
        options = out.get("stream_options")
        options = dict(options) if isinstance(options, dict) else {}
        if not options.get("include_usage"):
            strip_usage = True
            options["include_usage"] = True
        out["stream_options"] = options
    content = body.get("messages", body.get("prompt", body.get("input", "")))
    prompt_bytes = len(json.dumps(content, ensure_ascii=False).encode())
    encoded = json.dumps(out, ensure_ascii=False, separators=(",", ":"),
                         allow_nan=False).encode()
    return Prepared(encoded, stream, strip_usage, estimate_tokens(prompt_bytes))


def audio_seconds_from(obj: Any) -> float | None:
    """The seconds of audio a transcription or translation answer covered, where the
    provider reports them: OpenAI's `usage: {"type": "duration", "seconds": N}`, or the
    `duration` of a verbose_json answer (Groq's, whisper servers')."""
    if not isinstance(obj, dict):
        return None
    usage = obj.get("usage")
    if isinstance(usage, dict) and usage.get("type") == "duration":
        seconds = usage.get("seconds")
    else:
        seconds = obj.get("duration")
    if isinstance(seconds, int | float) and not isinstance(seconds, bool) \
            and math.isfinite(seconds) and seconds >= 0:
        return float(seconds)
    return None


def usage_from(obj: Any) -> Usage | None:
    """The `usage` of an answer or chunk (OpenAI's, or Groq's x_groq.usage), or None."""
    if not isinstance(obj, dict):
        return None
    usage = obj.get("usage")
    if not isinstance(usage, dict):
        extra = obj.get("x_groq")
        usage = extra.get("usage") if isinstance(extra, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int | None):
        return None
    return Usage(max(prompt, 0), max(completion or 0, 0))


def completion_text_bytes(answer: Any) -> int:
    """UTF-8 bytes of the generated text of a whole answer (for an estimate)."""
    total = 0
    if isinstance(answer, dict):
        for choice in answer.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            message = choice.get("message")
            text = message.get("content") if isinstance(message, dict) else choice.get("text")
            if isinstance(text, str):
                total += len(text.encode())
    return total


@dataclass
class SseSplitter:
    """Cuts a byte stream into whole SSE events (each with its blank-line terminator)."""

    _buffer: bytes = b""

    def feed(self, data: bytes) -> list[bytes]:
        """Whole events completed by `data`; the rest waits for more."""
        self._buffer += data
        events = []
        while True:
            cut = _event_end(self._buffer)
            if cut < 0:
                return events
            events.append(self._buffer[:cut])
            self._buffer = self._buffer[cut:]

    def rest(self) -> bytes:
        """Bytes of an unfinished event (sent as is when the stream ends)."""
        rest, self._buffer = self._buffer, b""
        return rest


def _event_end(buffer: bytes) -> int:
    ends = [i for i in (buffer.find(b"\n\n"), buffer.find(b"\r\n\r\n")) if i >= 0]
    if not ends:
        return -1
    first = min(ends)
    return first + (4 if buffer.startswith(b"\r\n\r\n", first) else 2)


@dataclass(frozen=True, slots=True)
class Event:
    """What one SSE event means to the egress."""

    usage: Usage | None = None
    usage_only: bool = False  # the include_usage chunk: no choices, only usage
    content: bool = False  # a data chunk (counts towards the completion estimate)
    done: bool = False  # data: [DONE]


def read_event(event: bytes) -> Event:
    """Parse one SSE event's data lines (comments and pings mean nothing)."""
    lines = [line[5:].strip() for line in event.splitlines() if line.startswith(b"data:")]
    if not lines:
        return Event()
    data = b"\n".join(lines)
    if data == b"[DONE]":
        return Event(done=True)
    if b'"usage"' not in data and b"x_groq" not in data:
        return Event(content=True)
    try:
        parsed = json.loads(data)
    except ValueError:
        return Event(content=True)
    usage = usage_from(parsed)
    choices = parsed.get("choices") if isinstance(parsed, dict) else None
    usage_only = usage is not None and not choices
    return Event(usage=usage, usage_only=usage_only, content=not usage_only)


@dataclass
class StreamTally:
    """Usage and size of a stream as it passes through."""

    usage: Usage | None = None
    chunks: int = 0
    done: bool = False

    def take(self, event: Event) -> None:
        """Count one event."""
        if event.usage is not None:
            self.usage = event.usage
        if event.content:
            self.chunks += 1
        if event.done:
            self.done = True

    def settled_usage(self, prompt_estimate: int) -> Usage:
        """The provider's usage, or an estimate: the prompt's, and one token per chunk."""
        if self.usage is not None:
            return self.usage
        return Usage(prompt_estimate, self.chunks, estimated=True)


def parse_iso(text: str) -> datetime:
    """An ISO 8601 time from the ledger (always stored in UTC)."""
    when = datetime.fromisoformat(text)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
