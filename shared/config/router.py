"""`[router]`, `[backends.*]`, `[profiles.*]`, `[egress]` and `[keys]`: what may answer whom."""

from __future__ import annotations

import re
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import Field, ValidationInfo, field_validator, model_validator

from mushishi.shared.config._base import AbsolutePath, CredentialName, Issue, Section
from mushishi.shared.locality import (
    AddressError,
    Resolver,
    classify,
    parse_backend_url,
    parse_ip,
    system_resolver,
    unix_socket_refusal,
)
from mushishi.shared.t1_readers import BENCH_USER, MUSHISHI_USERS, T1_READER_USERS

if TYPE_CHECKING:
    from mushishi.shared.config.settings import MushishiSettings

Tier = Literal["T1", "T1-strict", "T2", "T3"]
SOVEREIGN_TIERS: frozenset[str] = frozenset({"T1", "T1-strict"})

# The OpenAI endpoints a backend may serve (DESIGN.md §9), named by their path below /v1.
Endpoint = Literal["chat/completions", "completions", "embeddings", "audio/transcriptions",
                   "audio/translations", "audio/speech", "images/generations", "images/edits",
                   "responses", "rerank"]
ENDPOINTS: tuple[str, ...] = get_args(Endpoint)
# What a backend serves when `endpoints` is not set: a chat model server, as before §9.
DEFAULT_ENDPOINTS: tuple[str, ...] = ("chat/completions", "completions", "embeddings")

# The request values a ComfyUI workflow template takes, and where (NODE.inputs.NAME).
WorkflowInput = Literal["prompt", "negative_prompt", "seed", "width", "height", "n"]
WORKFLOW_PATH = re.compile(r"[^.\s]+\.inputs\.[^.\s]+")

_LISTEN_TCP = re.compile(r"^(?P<host>\[[0-9a-fA-F:.]+\]|[^\s:\[\]]+):(?P<port>\d{1,5})$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def parse_listen(address: str) -> tuple[str, str | int]:
    """Split a listen address into ("unix", path) or (host, port); raise ValueError if malformed."""
    if address.startswith("unix:"):
        path = address.removeprefix("unix:")
        if not path.startswith("/"):
            raise ValueError(f"unix socket path must be absolute in {address!r}")
        return "unix", path
    match = _LISTEN_TCP.match(address)
    if not match or not 0 < int(match["port"]) < 65536:
        raise ValueError(
            f"{address!r} is not HOST:PORT, [IPV6]:PORT or unix:/ABSOLUTE/PATH"
        )
    return match["host"].strip("[]"), int(match["port"])


def parse_tcp_listen(address: str) -> tuple[str, int]:
    """(host, port) of a HOST:PORT or [IPV6]:PORT address; ValueError for anything else."""
    host, port = parse_listen(address)
    if host == "unix":
        raise ValueError(f"{address!r} must be HOST:PORT")
    return host, int(port)


def unix_listen_paths(listen: list[str]) -> list[str]:
    """The paths of the unix: addresses in `listen` (router.listen)."""
    paths = []
    for address in listen:
        host, path = parse_listen(address)
        if host == "unix":
            paths.append(str(path))
    return paths


def unix_listen_path(listen: list[str]) -> str | None:
    """The path of the first unix: address in `listen` (router.listen), or None."""
    return next(iter(unix_listen_paths(listen)), None)


def connect_host(host: str) -> str:
    """Where to connect to reach something that listens on `host`: a wildcard address
    (`0.0.0.0`, `::`, `[::]`, or no host at all) means this machine's loopback of the same
    family; brackets are dropped; anything else is itself."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not bare:
        return "127.0.0.1"
    try:
        address = ip_address(bare)
    except ValueError:
        return bare  # a host name
    if address.is_unspecified:
        return "::1" if address.version == 6 else "127.0.0.1"
    return bare


def connect_url(host: str, port: int) -> str:
    """`http://HOST:PORT` to reach something listening on `host`, IPv6 bracketed."""
    address = connect_host(host)
    return f"http://[{address}]:{port}" if ":" in address else f"http://{address}:{port}"


# Where a local network may lie: nothing here is routable on the public internet.
NON_PUBLIC_SPACE: tuple[IPv4Network | IPv6Network, ...] = (
    IPv4Network("127.0.0.0/8"), IPv4Network("10.0.0.0/8"), IPv4Network("172.16.0.0/12"),
    IPv4Network("192.168.0.0/16"), IPv4Network("100.64.0.0/10"),
    IPv4Network("169.254.0.0/16"),
    IPv6Network("::1/128"), IPv6Network("fc00::/7"), IPv6Network("fe80::/10"),
)


class RouterSettings(Section):
    """The OpenAI-compatible router (mushishi-router.service)."""

    listen: list[str] = Field(
        default=["127.0.0.1:4000", "unix:/run/mushishi/router.sock"],
        description="Addresses to serve on: HOST:PORT, [IPV6]:PORT or unix:/path. "
        "Under systemd the sockets come from mushishi-router.socket instead.",
    )
    local_networks: list[IPv4Network | IPv6Network] = Field(
        default=[
            IPv4Network("127.0.0.0/8"),
            IPv6Network("::1/128"),
            IPv4Network("100.64.0.0/10"),
        ],
        description="Networks that count as local. A backend is local only when every address "
        "it resolves to lies inside one of these; T1 traffic may reach nothing else. Each must "
        "lie inside loopback, RFC 1918, IPv6 ULA, link-local or 100.64.0.0/10 (the tailnet).",
    )
    local_hosts: list[str] = Field(
        default=[],
        description="Hostnames that may be used in local backend URLs; each must resolve only "
        "to addresses inside local_networks.",
    )
    egress_socket: AbsolutePath = Field(
        default="/run/mushishi/egress.sock",
        description="Unix socket of mushishi-egress, the only way cloud hops leave the box.",
    )
    max_body_bytes: int = Field(
        default=32 * 1024 * 1024,
        gt=0,
        description="Largest accepted request body in bytes (multimodal payloads are large).",
    )
    unix_peers: dict[str, list[str]] = Field(
        default={},
        description="Callers on the router's unix socket without an API key, by uid or user "
        "name (SO_PEERCRED), mapped to the profiles they may use. The users the model servers "
        "run as (mushishi, root) may be mapped only to T1/T1-strict profiles, and a caller "
        "running in a tenant, the CPU floor or a GPU preparation may use only those, key or "
        "no key; the bench has its own user, mushishi-bench.",
    )
    connect_timeout_s: float = Field(
        default=2.0, gt=0,
        description="Longest wait for a TCP connection to a local backend before the next hop.",
    )
    first_byte_timeout_s: float = Field(
        default=300.0, gt=0,
        description="Longest wait for a backend's first response byte before the next hop "
        "(a non-streamed answer's first byte comes only when it is complete).",
    )
    stream_idle_timeout_s: float = Field(
        default=300.0, gt=0,
        description="Longest silence inside a streamed answer before it is ended with an error.",
    )
    wait_feedback_s: float = Field(
        default=5.0, ge=0,
        description="A streamed request that waits (for a GPU mode switch, a queue, a free "
        "slot) gets an SSE comment line `: waiting for mode creative, 14 s` this often; "
        "SDKs ignore them. The first one commits the answer (200, event stream). 0: never.",
    )
    probe_interval_s: float = Field(
        default=2.0, gt=0,
        description="How often each local backend's health is probed (GET /health).",
    )
    probe_timeout_s: float = Field(
        default=1.0, gt=0, description="Timeout of one health probe."
    )
    drain_timeout_s: float = Field(
        default=30.0, ge=0,
        description="On SIGTERM, how long requests in flight may take to finish before they "
        "are cut (keep it below the unit's TimeoutStopSec=).",
    )
    confinement_probe: str = Field(
        default="192.0.2.1:9",
        description="IP:PORT of a non-local address the router sends one UDP datagram to at "
        "start: the kernel must refuse it (IPAddressDeny=), proving the confinement. "
        "TEST-NET-1's discard port by default, which no real host uses.",
    )
    state_dir: AbsolutePath = Field(
        default="/var/lib/mushishi/router",
        description="Where the router keeps the per-profile cloud share of the last day, so "
        "that a restart loses at most a minute of it (StateDirectory= of the unit).",
    )
    require_kernel_confinement: bool = Field(
        default=False,
        description="Refuse to start unless the kernel confinement self-check passes (set it "
        "on boxes whose kernel supports cgroup BPF; the result is always in /ready). Tenants "
        "follow it too: with it set, a tenant whose confinement probe cannot tell (no route "
        "to confinement_probe) is not declared ready; a probe that reaches the address always "
        "stops the tenant.",
    )

    @field_validator("listen")
    @classmethod
    def _listen_parses(cls, value: list[str]) -> list[str]:
        for address in value:
            parse_listen(address)
        return value

    @field_validator("local_networks")
    @classmethod
    def _networks_are_not_public(
        cls, value: list[IPv4Network | IPv6Network],
    ) -> list[IPv4Network | IPv6Network]:
        # The kernel layer allows exactly these networks (IPAddressAllow=), and T1 work may
        # reach anything in them: one public range here would quietly void the guarantee.
        for network in value:
            if not any(network.version == space.version and network.subnet_of(space)  # type: ignore[arg-type]
                       for space in NON_PUBLIC_SPACE):
                raise ValueError(
                    f"{network} is not inside loopback, private (RFC 1918, IPv6 ULA), "
                    "link-local or the tailnet's shared address space (100.64.0.0/10): "
                    "router.local_networks may list only networks that cannot be a cloud "
                    "provider's")
        return value

    @field_validator("confinement_probe")
    @classmethod
    def _probe_is_an_ip_literal(cls, value: str, info: ValidationInfo) -> str:
        host, _port = parse_listen(value)
        ip = None if host == "unix" else parse_ip(str(host))
        if ip is None:
            raise ValueError(f"{value!r} must be IP:PORT (an address literal, not a hostname)")
        # The check proves something only for an address the router's unit must not reach:
        # a local, loopback, multicast or broadcast one would "pass" (or fail) for another
        # reason than IPAddressDeny=.
        networks = info.data.get("local_networks") or []
        if (ip.is_multicast or ip.is_loopback or ip.is_unspecified or ip.is_link_local
                or str(ip) == "255.255.255.255"
                or any(ip.version == n.version and ip in n for n in networks)):
            raise ValueError(f"{value!r} must be a unicast address outside "
                             "router.local_networks (the default 192.0.2.1:9, TEST-NET-1's "
                             "discard port, is)")
        return value


class BudgetSettings(Section):
    """Daily limits for one cloud provider; unset means unlimited."""

    requests_per_day: int | None = Field(default=None, ge=0, description="Requests per UTC day.")
    tokens_per_day: int | None = Field(
        default=None, ge=0, description="Prompt plus completion tokens per UTC day."
    )
    cost_per_day: float | None = Field(
        default=None, ge=0, description="Spend per UTC day, in the currency of the prices."
    )
    audio_seconds_per_day: float | None = Field(
        default=None, ge=0,
        description="Seconds of audio transcribed or translated per UTC day, as the provider "
        "reports them (OpenAI's usage.seconds, a verbose_json duration); answers that do not "
        "say count as requests only.",
    )


class PriceSettings(Section):
    """What one cloud provider charges, so that mushishi-egress can count spend."""

    prompt_per_million: float = Field(
        ge=0, description="Price of one million prompt (input) tokens."
    )
    completion_per_million: float = Field(
        ge=0, description="Price of one million completion (output) tokens."
    )


# Headers mushishi-egress sets itself; a backend's extra_headers may not replace them.
RESERVED_HEADERS = frozenset({"authorization", "host", "content-length", "content-type",
                              "transfer-encoding", "connection", "accept-encoding"})


class BackendSettings(Section):
    """One model server the router may send requests to. Locality is decided by its address."""

    url: str = Field(
        description="Base URL of an OpenAI-compatible API (http://HOST:PORT/v1), "
        "or unix:/path/to.sock for a unix-socket backend; a comfyui backend's is ComfyUI's "
        "own address (http://HOST:PORT)."
    )
    model: str = Field(description="Model name sent upstream in the request's `model` field.")
    modes: list[str] | None = Field(
        default=None,
        description="GPU modes in which this backend is up; unset means always up "
        "(e.g. the CPU floor).",
    )
    endpoints: list[Endpoint] = Field(
        default=list(DEFAULT_ENDPOINTS),
        min_length=1,
        description="The OpenAI endpoints this backend serves, by their path below /v1: "
        "chat/completions, completions, embeddings, audio/transcriptions, audio/translations, "
        "audio/speech, images/generations, images/edits, responses, rerank. A request walks "
        "its profile's chain skipping, with no round trip, every backend that does not serve "
        "its endpoint; a profile with none answers 404 endpoint_unsupported. Anthropic "
        "Messages use chat/completions.",
    )
    max_concurrency: int | None = Field(
        default=None,
        ge=1,
        description="Requests in flight at once; beyond it requests queue, or overflow to the "
        "next hop where the tier allows. Unset: a llama-server's slot count (GET /props "
        "total_slots) when it publishes one, else unlimited (vLLM publishes no max_num_seqs).",
    )
    api_key_credential: CredentialName | None = Field(
        default=None,
        description="Credential holding the upstream API key (cloud providers; read by "
        "mushishi-egress only).",
    )
    budget: BudgetSettings | None = Field(
        default=None, description="Daily limits for this provider (cloud backends)."
    )
    queue_max: int = Field(
        default=32, ge=0,
        description="Requests that may wait for a free slot when max_concurrency is reached; "
        "beyond it they overflow to the next hop or are refused.",
    )
    health_url: str | None = Field(
        default=None,
        description="Local backends: URL probed for health (default: the URL's origin + "
        "/health, which vLLM and llama-server both serve; /system_stats for a comfyui "
        "backend). Must be local too.",
    )
    first_byte_timeout_s: float | None = Field(
        default=None, gt=0,
        description="Overrides router.first_byte_timeout_s for this backend. For a cloud "
        "backend mushishi-egress applies it to the provider (answering 504 when it expires), "
        "and the router waits 2 s longer for the egress's answer.",
    )
    connect_timeout_s: float | None = Field(
        default=None, gt=0,
        description="Cloud backends: longest wait for the connection (TCP and TLS) to the "
        "provider; unset means egress.connect_timeout_s.",
    )
    cooldown_after_failures: int | None = Field(
        default=None, ge=1,
        description="Cloud backends: consecutive failures (connection errors, timeouts, 5xx, "
        "401/403, 429 without Retry-After) after which mushishi-egress stops sending to this "
        "provider for cooldown_s; unset means egress.cooldown_after_failures. Never for local "
        "backends: they are probed, not cooled down.",
    )
    cooldown_s: float | None = Field(
        default=None, gt=0,
        description="Cloud backends: how long a provider is skipped after cooldown_after_failures "
        "failures; unset means egress.cooldown_s.",
    )
    price: PriceSettings | None = Field(
        default=None,
        description="Cloud backends: prices per million tokens; spend is counted (and "
        "budget.cost_per_day enforced) only when set.",
    )
    extra_body: dict[str, Any] = Field(
        default={},
        description="Cloud backends: JSON fields merged into every request body sent to the "
        "provider, overriding the caller's (e.g. OpenRouter's provider = { data_collection = "
        "\"deny\" }). Other provider-specific fields in a request pass through unchanged.",
    )
    extra_headers: dict[str, str] = Field(
        default={},
        description="Cloud backends: HTTP headers sent to the provider (e.g. OpenRouter's "
        "X-Title); never Authorization, which comes from api_key_credential.",
    )
    kind: Literal["openai", "comfyui"] = Field(
        default="openai",
        description="The API the backend speaks: `openai` (an OpenAI-compatible server), or "
        "`comfyui` (ComfyUI's own API at the URL's origin, http://HOST:PORT: an "
        "images/generations request runs the `workflow` template, followed on ComfyUI's "
        "websocket, and is answered OpenAI-shaped). A comfyui backend serves "
        "images/generations only (its default endpoints) and must be local.",
    )
    workflow: str | None = Field(
        default=None,
        description="kind = \"comfyui\": absolute path of the API-format workflow template "
        "(ComfyUI's \"Export (API)\"), read at each request; `mushishi config check` reads it "
        "and checks every workflow_inputs path against it.",
    )
    workflow_inputs: dict[WorkflowInput, str] = Field(
        default={},
        description="kind = \"comfyui\": where each request value goes in the workflow, as "
        "NODE.inputs.NAME paths: prompt (required), negative_prompt, seed, width and height "
        "(from `size`, WIDTHxHEIGHT), n (the batch size; without it, n runs with seeds seed, "
        "seed+1, …).",
    )
    stream_usage: bool = Field(
        default=True,
        description="Cloud backends: ask for token usage in streamed answers "
        "(stream_options.include_usage; the extra usage chunk is removed when the caller did "
        "not ask for it). Turn off only for a provider that rejects stream_options: its "
        "streamed answers are then counted from estimates.",
    )

    @field_validator("endpoints")
    @classmethod
    def _endpoints_once(cls, value: list[str]) -> list[str]:
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"{', '.join(repeated)} listed more than once")
        return value

    @field_validator("workflow_inputs")
    @classmethod
    def _workflow_paths(cls, value: dict[str, str]) -> dict[str, str]:
        for name, path in value.items():
            if not WORKFLOW_PATH.fullmatch(path):
                raise ValueError(f"{name} = {path!r} is not a NODE.inputs.NAME path (e.g. "
                                 "\"6.inputs.text\")")
        return value

    @field_validator("workflow")
    @classmethod
    def _workflow_absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("must be an absolute path")
        return value

    @model_validator(mode="after")
    def _comfyui_keys(self) -> BackendSettings:
        if self.kind != "comfyui":
            if self.workflow is not None or self.workflow_inputs:
                raise ValueError("workflow and workflow_inputs are for kind = \"comfyui\" "
                                 "backends only")
            return self
        if "endpoints" not in self.model_fields_set:
            self.endpoints = ["images/generations"]
        if self.endpoints != ["images/generations"]:
            raise ValueError("a kind = \"comfyui\" backend serves images/generations only: "
                             "endpoints = [\"images/generations\"]")
        if self.workflow is None:
            raise ValueError("kind = \"comfyui\" needs workflow (the API-format workflow "
                             "template's path)")
        if "prompt" not in self.workflow_inputs:
            raise ValueError("kind = \"comfyui\" needs workflow_inputs.prompt (where the "
                             "prompt goes, e.g. \"6.inputs.text\")")
        if self.url.startswith("unix:"):
            raise ValueError("a kind = \"comfyui\" backend is reached over TCP "
                             "(http://HOST:PORT, ComfyUI's own address)")
        return self

    @field_validator("extra_headers")
    @classmethod
    def _headers_not_reserved(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is set by mushishi-egress itself")
            if any(c in name + text for c in "\r\n\x00") or not name.strip():
                raise ValueError(f"header {name!r} has an empty name or a line break")
        return value

    @field_validator("extra_body")
    @classmethod
    def _body_does_not_touch_routing(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in ("model", "stream", "messages", "prompt", "input"):
            if name in value:
                raise ValueError(f"{name!r} comes from the request and the backend's model, "
                                 "not from extra_body")
        return value


# Keys of [backends.<name>] that only a cloud backend may set (mushishi-egress reads them).
CLOUD_ONLY_KEYS = ("api_key_credential", "budget", "connect_timeout_s",
                   "cooldown_after_failures", "cooldown_s", "price", "extra_body",
                   "extra_headers")


class ProfileSettings(Section):
    """A named route: its tier decides which backends may ever see its requests."""

    tier: Tier = Field(description="T1 (local only), T1-strict (listed backends only, no "
                       "fallback), T2 (local first, then cloud), T3 (cloud allowed first).")
    chain: list[str] = Field(
        min_length=1, description="Backends to try, in order (names from [backends.*])."
    )
    queue_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="T1: how long a request waits for a local backend when all are down "
        "(also bounds waits for a busy backend or a GPU mode switch).",
    )
    queue_max: int = Field(
        default=64, ge=0,
        description="T1: requests that may wait at once when every local hop is down; a "
        "request beyond it is answered 503 at once.",
    )
    require_mode: str | None = Field(
        default=None,
        description="T1-strict: the GPU mode the chain needs; in any other mode the answer is "
        "503 mode_mismatch (or a switch, see on_mode_mismatch).",
    )
    local_media_prefixes: list[str] = Field(
        default=[],
        description="T1/T1-strict: URL prefixes of local media servers a request may reference "
        "(e.g. http://127.0.0.1:8090/media/); any other media URL in a message (image_url, "
        "audio_url, video_url, file URLs, Anthropic url sources) is refused with "
        "remote_media_refused, since the model server would fetch it. Each must be local, "
        "checked like a backend's URL, and end with `/`; `data:` URIs always pass.",
    )
    on_mode_mismatch: Literal["error", "switch"] = Field(
        default="error",
        description="When the chain needs another GPU mode (require_mode, or the first hop "
        "of the chain that runs in another mode, unless an earlier hop can answer): `error` "
        "answers mode_mismatch (T1-strict) or skips those hops (other tiers); `switch` asks "
        "gpud for that mode (once per mode for all waiting requests; refused while a hold "
        "exists, a tenant the switch would stop is busy, or within modes.min_mode_dwell_s), "
        "then waits within queue_timeout_s, also for the backend's first healthy probe. "
        "Refused: T1-strict answers mode_mismatch, the other tiers take their next hop.",
    )


class EgressSettings(Section):
    """mushishi-egress: the only process allowed to reach cloud APIs."""

    state_dir: AbsolutePath = Field(
        default="/var/lib/mushishi/egress",
        description="Budget ledger and the audit of what left the box (SQLite, WAL) live here.",
    )
    metrics_listen: str = Field(
        default="127.0.0.1:9641", description="HOST:PORT of the egress daemon's /metrics."
    )
    allowed_peers: list[str] = Field(
        default=["mushishi"],
        description="Who may use the egress socket, by user name or numeric uid, checked on "
        "every connection (SO_PEERCRED): the router's user. The socket's mode (0660, group "
        "mushishi) lets the group connect; this narrows it to these uids.",
    )
    connect_timeout_s: float = Field(
        default=10.0, gt=0,
        description="Longest wait for a connection (TCP and TLS) to a cloud provider; "
        "backends.<name>.connect_timeout_s overrides it.",
    )
    cooldown_after_failures: int = Field(
        default=3, ge=1,
        description="Consecutive failures of a cloud provider after which it is skipped for "
        "cooldown_s (per backend: backends.<name>.cooldown_after_failures).",
    )
    cooldown_s: float = Field(
        default=60.0, gt=0,
        description="How long a failing cloud provider is skipped (per backend: "
        "backends.<name>.cooldown_s). A 429 with Retry-After skips it for that long instead.",
    )
    max_retry_after_s: float = Field(
        default=3600.0, gt=0,
        description="Longest Retry-After (from a provider's 429) that is honoured; a longer one "
        "is cut to this.",
    )
    drain_timeout_s: float = Field(
        default=30.0, ge=0,
        description="On SIGTERM, how long requests in flight (streams included) may take to "
        "finish before they are cut and counted (keep it below the unit's TimeoutStopSec=).",
    )
    audit_retention_days: int = Field(
        default=90, ge=1,
        description="How long the audit of what left the box keeps a request's row (time, "
        "profile, tier, backend, model, bytes, tokens, outcome; never any text), read with "
        "`mushishi audit`. Older rows are pruned hourly, in small batches.",
    )

    @field_validator("metrics_listen")
    @classmethod
    def _metrics_listen_parses(cls, value: str) -> str:
        parse_tcp_listen(value)
        return value


def check(settings: MushishiSettings, resolve: Resolver | None = system_resolver
          ) -> list[Issue]:
    """Cross-references of the routing sections: chains, keys and modes must name real things,
    and a sovereign chain may name only local backends (locality decided by address)."""
    issues: list[Issue] = []
    backends = settings.backends
    issues += _locality_issues(settings, resolve)
    known_backends = ", ".join(sorted(backends)) or "none defined"
    known_modes = set(settings.modes)
    for name, profile in settings.profiles.items():
        for index, hop in enumerate(profile.chain):
            if hop not in backends:
                issues.append(Issue(
                    f"profiles.{name}.chain[{index}]",
                    f"unknown backend {hop!r} (backends: {known_backends})",
                ))
        if profile.require_mode is not None and profile.require_mode not in known_modes:
            issues.append(Issue(
                f"profiles.{name}.require_mode",
                f"unknown mode {profile.require_mode!r} (modes: {', '.join(sorted(known_modes))})",
            ))
        if profile.tier != "T1-strict" and profile.require_mode is not None:
            issues.append(Issue(
                f"profiles.{name}.require_mode", "only T1-strict profiles may require a mode"
            ))
    for name, backend in backends.items():
        for index, mode in enumerate(backend.modes or []):
            if mode not in known_modes:
                issues.append(Issue(
                    f"backends.{name}.modes[{index}]",
                    f"unknown mode {mode!r} (modes: {', '.join(sorted(known_modes))})",
                ))
    issues += _egress_issues(settings)
    issues += _unix_peer_issues(settings)
    for key_hash, profiles in settings.keys.items():
        if not _SHA256_HEX.match(key_hash):
            issues.append(Issue(
                f"keys.{key_hash}",
                "must be the lowercase sha256 hex digest of the API key, never the key itself "
                "(`printf %s KEY | sha256sum`)",
            ))
        for index, profile in enumerate(profiles):
            if profile not in settings.profiles:
                issues.append(Issue(
                    f"keys.{key_hash}[{index}]", f"unknown profile {profile!r}"
                ))
    return issues


def _egress_issues(settings: MushishiSettings) -> list[Issue]:
    """Budgets and prices must be usable; the allowed peers must exist when set."""
    issues: list[Issue] = []
    for name, backend in settings.backends.items():
        budget = backend.budget
        if budget is not None and budget.cost_per_day is not None and backend.price is None:
            issues.append(Issue(f"backends.{name}.budget.cost_per_day",
                                f"needs backends.{name}.price to count spend"))
    # The default user exists once `mushishi install` ran; mushishi-egress checks it at start.
    if "allowed_peers" in settings.egress.model_fields_set:
        if not settings.egress.allowed_peers:
            issues.append(Issue("egress.allowed_peers",
                                "must name at least the router's user (mushishi)"))
        for index, peer in enumerate(settings.egress.allowed_peers):
            if resolve_peer_uid(peer) is None:
                issues.append(Issue(f"egress.allowed_peers[{index}]",
                                    f"no such user {peer!r} (give a user name or a numeric "
                                    "uid)"))
    return issues


def _unix_peer_issues(settings: MushishiSettings) -> list[Issue]:
    """Peers must be users and profiles that exist; a user the units reading T1 prompts run
    as may be mapped only to sovereign profiles (shared/t1_readers.py)."""
    issues: list[Issue] = []
    readers = {uid: user for user in T1_READER_USERS
               if (uid := resolve_peer_uid(user)) is not None}
    readers.setdefault(0, "root")
    for peer, profiles in settings.router.unix_peers.items():
        uid = resolve_peer_uid(peer)
        if uid is None and peer not in MUSHISHI_USERS:
            issues.append(Issue(f"router.unix_peers.{peer}",
                                f"no such user {peer!r} (give a user name or a numeric uid)"))
        reader = peer if peer in T1_READER_USERS else readers.get(uid) if uid is not None \
            else None
        for index, profile in enumerate(profiles):
            found = settings.profiles.get(profile)
            if found is None:
                issues.append(Issue(
                    f"router.unix_peers.{peer}[{index}]", f"unknown profile {profile!r}"
                ))
            elif reader is not None and found.tier not in SOVEREIGN_TIERS:
                issues.append(Issue(f"router.unix_peers.{peer}[{index}]", (
                    f"user {reader} runs the units that read T1 prompts (tenants, the CPU "
                    f"floor, GPU preparation), so it may be mapped only to T1 and T1-strict "
                    f"profiles, not {profile!r} ({found.tier}); map the caller's own user "
                    f"instead (the bench's is {BENCH_USER}), or give it an API key")))
    return issues


def _uid_of(user: str) -> int | None:
    import pwd

    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def resolve_peer_uid(peer: str) -> int | None:
    """A `router.unix_peers` key as a uid: digits are a uid, anything else a user name."""
    return int(peer) if peer.isdigit() else _uid_of(peer)


def _locality_issues(settings: MushishiSettings, resolve: Resolver | None) -> list[Issue]:
    router = settings.router
    networks = router.local_networks
    issues: list[Issue] = []
    local: dict[str, bool] = {}
    reasons: dict[str, str] = {}
    own_sockets = unix_listen_paths(router.listen)
    for name, backend in settings.backends.items():
        try:
            address = parse_backend_url(backend.url)
        except AddressError as error:
            issues.append(Issue(f"backends.{name}.url", str(error)))
            local[name], reasons[name] = False, str(error)
            continue
        # Only hostnames listed as local are resolved: cloud hostnames are the egress's business.
        verdict = classify(address, networks, router.local_hosts, resolve,
                           egress_socket=router.egress_socket, own_sockets=own_sockets)
        local[name], reasons[name] = verdict.local, verdict.reason
        refusal = None if address.unix_path is None else \
            unix_socket_refusal(address.unix_path, router.egress_socket, own_sockets)
        if refusal is not None:
            # The egress's socket is the way out and the router's own a loop, never a backend.
            issues.append(Issue(f"backends.{name}.url", (
                f"{backend.url} {refusal}; a cloud backend's url is the provider's own (the "
                "router reaches it through the egress), a local one's its model server's")))
            continue
        if backend.health_url is not None:
            try:
                health = classify(parse_backend_url(backend.health_url), networks,
                                  router.local_hosts, resolve)
            except AddressError as error:
                issues.append(Issue(f"backends.{name}.health_url", str(error)))
            else:
                if not health.local:
                    issues.append(Issue(f"backends.{name}.health_url",
                                        f"must be local: {health.reason}"))
        if not verdict.local and "responses" in backend.endpoints:
            issues.append(Issue(f"backends.{name}.endpoints", (
                f"cloud backend {name!r} cannot list \"responses\": mushishi-egress relays "
                "chat completions, and the router translates Responses requests to chat for "
                "every hop that serves chat/completions")))
        if not verdict.local and backend.kind == "comfyui":
            issues.append(Issue(f"backends.{name}.kind", (
                f"a comfyui backend must be local (ComfyUI on this box), but {name!r} is not: "
                f"{verdict.reason}")))
        if verdict.local and backend.api_key_credential is not None:
            issues.append(Issue(
                f"backends.{name}.api_key_credential",
                f"backend {name!r} is local ({verdict.reason}); API keys are only for cloud "
                "backends, which mushishi-egress reaches",
            ))
        if verdict.local:
            for key in CLOUD_ONLY_KEYS[1:]:
                if key in backend.model_fields_set:
                    issues.append(Issue(
                        f"backends.{name}.{key}",
                        f"backend {name!r} is local ({verdict.reason}); {key} is for cloud "
                        "backends only (local backends are probed, never cooled down or "
                        "budgeted)"))
    for name, profile in settings.profiles.items():
        for index, hop in enumerate(profile.chain):
            if hop not in local:
                continue
            key = f"profiles.{name}.chain[{index}]"
            if profile.tier in SOVEREIGN_TIERS and not local[hop]:
                issues.append(Issue(
                    key, f"{profile.tier} profile {name!r} may only use local backends, but "
                         f"backend {hop!r} is not local: {reasons[hop]}"))
            if profile.tier == "T2" and index == 0 and not local[hop]:
                issues.append(Issue(
                    key, f"T2 profile {name!r} must start with a local backend, but backend "
                         f"{hop!r} is cloud ({reasons[hop]}); use T3 for cloud-first"))
        if len(set(profile.chain)) != len(profile.chain):
            issues.append(Issue(f"profiles.{name}.chain", "names a backend twice"))
        issues += _media_prefix_issues(name, profile, router, resolve)
    return issues


def _media_prefix_issues(name: str, profile: ProfileSettings, router: RouterSettings,
                         resolve: Resolver | None) -> list[Issue]:
    """A profile's local_media_prefixes: sovereign profiles only, local http(s) URLs ending
    with `/` (a prefix without it would also match `http://127.0.0.1:80@elsewhere/`)."""
    issues = []
    for index, prefix in enumerate(profile.local_media_prefixes):
        key = f"profiles.{name}.local_media_prefixes[{index}]"
        if profile.tier not in SOVEREIGN_TIERS:
            issues.append(Issue(key, f"only T1 and T1-strict profiles check media URLs; "
                                     f"{name!r} is {profile.tier}"))
            continue
        try:
            address = parse_backend_url(prefix)
        except AddressError as error:
            issues.append(Issue(key, str(error)))
            continue
        if address.unix_path is not None or not prefix.endswith("/"):
            issues.append(Issue(key, f"{prefix!r} must be an http(s) URL ending with `/` "
                                     "(http://127.0.0.1:8090/media/)"))
            continue
        verdict = classify(address, router.local_networks, router.local_hosts, resolve)
        if not verdict.local:
            issues.append(Issue(key, f"must be local: {verdict.reason}"))
    return issues
