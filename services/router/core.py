"""Routing decisions as pure functions over plain data (no I/O, no clock).

A profile's chain is compiled once into an immutable `RouteTable`; nothing in a request can
add a hop to it. Each hop is judged from the backend's probed health and the GPU mode, a
failed attempt is classified, and the final answer of a failed request is chosen here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING

from mushishi.services.router.errors import ErrorCode
from mushishi.shared.config.router import DEFAULT_ENDPOINTS, SOVEREIGN_TIERS, unix_listen_paths
from mushishi.shared.locality import backend_locality

if TYPE_CHECKING:
    from mushishi.shared.config.settings import MushishiSettings


# mushishi-egress applies a cloud backend's first_byte_timeout_s to the provider and answers
# 504 when it expires; the router waits this much longer, so that the egress (which counts
# the failure towards the provider's cooldown) always answers first.
EGRESS_TIMEOUT_HEADROOM_S = 2.0

# An endpoint the router translates for a backend that serves only another: a Responses
# request goes to a chat backend as chat completions (services/router/responses.py).
TRANSLATED_ENDPOINTS: Mapping[str, str] = MappingProxyType({"responses": "chat/completions"})

# Request fields other routers obey to widen routing; here they are dropped, never obeyed.
ROUTING_FIELDS: frozenset[str] = frozenset({
    "fallbacks", "context_window_fallbacks", "content_policy_fallbacks", "api_base",
    "base_url", "api_key", "custom_llm_provider", "mock_response", "model_list",
})


@dataclass(frozen=True, slots=True)
class Hop:
    """One backend as a routing step."""

    name: str
    model: str
    local: bool
    locality: str  # why it is (not) local
    modes: frozenset[str] | None = None
    switch_mode: str | None = None  # the mode to ask gpud for: the first of its `modes`
    max_concurrency: int | None = None
    queue_max: int = 32
    first_byte_timeout_s: float = 300.0
    endpoints: frozenset[str] = frozenset(DEFAULT_ENDPOINTS)  # backends.<name>.endpoints
    kind: str = "openai"  # backends.<name>.kind: "openai" | "comfyui"
    workflow: str | None = None  # comfyui: the API-format workflow template's path
    workflow_inputs: tuple[tuple[str, str], ...] = ()  # comfyui: (request value, node path)


@dataclass(frozen=True, slots=True)
class RouteProfile:
    """A profile compiled for routing: its tier and the only hops it may ever use."""

    name: str
    tier: str
    hops: tuple[Hop, ...]
    queue_timeout_s: float = 120.0
    queue_max: int = 64
    require_mode: str | None = None
    on_mode_mismatch: str = "error"
    media_prefixes: tuple[str, ...] = ()  # local media a sovereign request may reference
    # `serving_hops` of the whole chain, per endpoint, made on first use (per request it
    # would walk the chain every time).
    _serving: dict[str, tuple[Hop, ...]] = field(default_factory=dict, init=False,
                                                 compare=False, repr=False)

    def serving(self, endpoint: str) -> tuple[Hop, ...]:
        """The hops of the whole chain that serve `endpoint` (`serving_hops`)."""
        hops = self._serving.get(endpoint)
        if hops is None:
            hops = self._serving[endpoint] = serving_hops(self.hops, endpoint)
        return hops

    @property
    def sovereign(self) -> bool:
        """T1 and T1-strict: local hops only, never the egress."""
        return self.tier in SOVEREIGN_TIERS

    @property
    def falls_back(self) -> bool:
        """Every tier but T1-strict may try the next hop."""
        return self.tier != "T1-strict"

    @property
    def endpoints(self) -> frozenset[str]:
        """The endpoints at least one hop of the chain serves (natively or translated)."""
        native = frozenset().union(*(hop.endpoints for hop in self.hops))
        return native | {endpoint for endpoint, target in TRANSLATED_ENDPOINTS.items()
                         if target in native}


@dataclass(frozen=True)
class RouteTable:
    """Everything the hot path needs, computed once per (re)load of the config."""

    profiles: Mapping[str, RouteProfile]
    backends: Mapping[str, Hop]
    keys: Mapping[str, frozenset[str]]  # sha256 hex of an API key -> profiles
    peers: Mapping[int, frozenset[str]]  # unix peer uid -> profiles
    # Keys already seen and found in `keys`, so that a known key is hashed once. Only known
    # keys enter it, so it never holds more entries than `keys` has.
    _known_keys: dict[str, frozenset[str]] = field(default_factory=dict, compare=False,
                                                   repr=False)

    def profiles_for_key(self, key: str) -> frozenset[str] | None:
        """The profiles an API key may use, or None for an unknown key."""
        found = self._known_keys.get(key)
        if found is None:
            found = self.keys.get(
                hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest())
            if found is not None:
                self._known_keys[key] = found
        return found


def compile_hops(settings: MushishiSettings) -> dict[str, Hop]:
    """Every backend of `settings` as a hop, its locality decided by address."""
    router = settings.router
    backends: dict[str, Hop] = {}
    own_sockets = unix_listen_paths(router.listen)
    for name, backend in settings.backends.items():
        # Locality by listing and literal only: resolution happens at every connection.
        verdict = backend_locality(backend.url, router.local_networks, router.local_hosts,
                                   egress_socket=router.egress_socket, own_sockets=own_sockets)
        backends[name] = Hop(
            name=name,
            model=backend.model,
            local=verdict.local,
            locality=verdict.reason,
            modes=frozenset(backend.modes) if backend.modes is not None else None,
            switch_mode=backend.modes[0] if backend.modes else None,
            max_concurrency=backend.max_concurrency,
            queue_max=backend.queue_max,
            first_byte_timeout_s=(backend.first_byte_timeout_s or router.first_byte_timeout_s)
            + (0.0 if verdict.local else EGRESS_TIMEOUT_HEADROOM_S),
            endpoints=frozenset(backend.endpoints),
            kind=backend.kind,
            workflow=backend.workflow,
            workflow_inputs=tuple(sorted(backend.workflow_inputs.items())),
        )
    return backends


def compile_table(
    settings: MushishiSettings,
    resolve_uid: Callable[[str], int | None],
    running: Mapping[str, Hop] | None = None,
) -> RouteTable:
    """Build the route table; `settings` has passed the config checks already. A reload
    passes the `running` table's hops (its [backends] are unchanged): the new profiles are
    chains of the very hops the pools and health state were built for."""
    router = settings.router
    backends = dict(running) if running is not None else compile_hops(settings)
    profiles = {}
    for name, profile in settings.profiles.items():
        hops = tuple(backends[hop] for hop in profile.chain)
        if profile.tier in SOVEREIGN_TIERS and not all(hop.local for hop in hops):
            # The config check refuses this; never trust that it ran.
            raise ValueError(f"profile {name!r} ({profile.tier}) names a non-local backend")
        profiles[name] = RouteProfile(
            name=name,
            tier=profile.tier,
            hops=hops,
            queue_timeout_s=profile.queue_timeout_s,
            queue_max=profile.queue_max,
            require_mode=profile.require_mode,
            on_mode_mismatch=profile.on_mode_mismatch,
            media_prefixes=tuple(profile.local_media_prefixes),
        )
    peers: dict[int, frozenset[str]] = {}
    for peer, allowed in router.unix_peers.items():
        uid = resolve_uid(peer)
        if uid is not None:
            peers[uid] = peers.get(uid, frozenset()) | frozenset(allowed)
    return RouteTable(
        profiles=MappingProxyType(profiles),
        backends=MappingProxyType(backends),
        keys=MappingProxyType({k: frozenset(v) for k, v in settings.keys.items()}),
        peers=MappingProxyType(peers),
    )


# -- the state a decision reads ----------------------------------------------------------

class Health(StrEnum):
    """A local backend's health, from active probes and request outcomes."""

    UNKNOWN = "unknown"  # not probed yet: worth a try
    UP = "up"
    STARTING = "starting"  # loading a model, or refusing connections while its mode starts
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class GpuView:
    """What gpud last said on the bus; `present=False` when it is not on the bus."""

    present: bool = False
    active_mode: str | None = None
    state: str | None = None  # ready | switching | failed | off
    last_switch_reason: str | None = None  # manual | hold-then | idle | request:profile=P


GPU_ABSENT = GpuView()


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a hop may be tried now, its state as shown in /status, and why."""

    hop: Hop
    usable: bool
    state: str  # up | unknown | starting | down | switching | mode_inactive | cloud
    reason: str


def judge_hop(hop: Hop, health: Health, health_reason: str, gpu: GpuView) -> Verdict:
    """Judge one hop from its health and the GPU mode; no network round trip."""
    if not hop.local:
        return Verdict(hop, True, "cloud", "cloud backend, reached through mushishi-egress")
    if hop.modes is not None and gpu.present:
        modes = ", ".join(sorted(hop.modes))
        if gpu.state == "switching":
            return Verdict(hop, False, "switching",
                           f"the GPU is switching modes ({hop.name} runs in {modes})")
        if gpu.active_mode not in hop.modes or gpu.state in ("off", "failed"):
            return Verdict(hop, False, "mode_inactive",
                           f"GPU mode is {gpu.active_mode or 'none'} ({gpu.state}); "
                           f"{hop.name} runs in {modes}")
    if health is Health.UP:
        return Verdict(hop, True, "up", health_reason or "healthy")
    if health is Health.UNKNOWN:
        return Verdict(hop, True, "unknown", health_reason or "not probed yet")
    return Verdict(hop, False, health.value, health_reason or health.value)


def pin_hops(profile: RouteProfile, pin: str | None) -> tuple[Hop, ...] | None:
    """The hops a `profile/model` pin keeps (by backend name or model); None if it keeps none.

    A pin can only narrow the profile's own chain, never add to it.
    """
    if pin is None:
        return profile.hops
    kept = tuple(hop for hop in profile.hops if pin in (hop.name, hop.model))
    return kept or None


def serves(hop: Hop, endpoint: str) -> bool:
    """Whether `hop` serves `endpoint`, itself or through the router's translation
    (`TRANSLATED_ENDPOINTS`: Responses to a chat backend)."""
    return endpoint in hop.endpoints or TRANSLATED_ENDPOINTS.get(endpoint) in hop.endpoints


def serving_hops(hops: tuple[Hop, ...], endpoint: str, *more: str) -> tuple[Hop, ...]:
    """The hops of a chain that serve `endpoint` (e.g. "audio/transcriptions"; itself or
    translated, `serves`), or any of `more`, in order: the others are skipped without a
    round trip, whatever the tier (a hop that does not serve an endpoint is not part of that
    endpoint's chain, so skipping it is no fallback)."""
    def served(hop: Hop) -> bool:
        return serves(hop, endpoint) or any(other in hop.endpoints for other in more)

    if all(served(hop) for hop in hops):
        return hops
    return tuple(hop for hop in hops if served(hop))


def split_model(model: str, profiles: Iterable[str]) -> tuple[str, str | None]:
    """"private" -> ("private", None); "private/cpu-model" -> ("private", "cpu-model")."""
    if model in profiles:
        return model, None
    head, slash, tail = model.partition("/")
    if slash and tail:
        return head, tail
    return model, None


class ModeGate(StrEnum):
    """A T1-strict profile's required GPU mode, as seen now."""

    OPEN = "open"  # no mode required, or the mode is active and ready
    WAIT = "wait"  # a switch is in progress
    MISMATCH = "mismatch"


def mode_gate(profile: RouteProfile, gpu: GpuView) -> tuple[ModeGate, str]:
    """Whether a profile's require_mode holds now, and why not."""
    required = profile.require_mode
    if required is None:
        return ModeGate.OPEN, ""
    if not gpu.present:
        return ModeGate.MISMATCH, (f"profile {profile.name!r} requires GPU mode {required!r}, "
                                   "but the GPU mode is unknown: mushishi-gpud is not on the bus")
    if gpu.state == "switching":
        return ModeGate.WAIT, f"the GPU is switching modes; {profile.name!r} requires {required!r}"
    if gpu.active_mode == required and gpu.state == "ready":
        return ModeGate.OPEN, ""
    return ModeGate.MISMATCH, (f"profile {profile.name!r} requires GPU mode {required!r}; the "
                               f"GPU is in {gpu.active_mode or 'no mode'} ({gpu.state})")


@dataclass(frozen=True, slots=True)
class ModeNeed:
    """Whether a request must wait for, or ask for, another GPU mode before its chain."""

    gate: ModeGate
    mode: str | None = None  # the mode to ask gpud for (MISMATCH)
    why: str = ""


MODE_OPEN = ModeNeed(ModeGate.OPEN)


def mode_need(profile: RouteProfile, hops: Sequence[Hop], verdict: Callable[[str], Verdict],
              gpu: GpuView) -> ModeNeed:
    """A T1-strict `require_mode` as `mode_gate` says; for a profile that may switch
    (`on_mode_mismatch = "switch"`, any tier), the mode of the first hop of its chain that
    is in another mode, unless an earlier hop can answer now. A switch in progress is
    waited for; hops down for another reason are the chain's business, not a mode's."""
    if profile.require_mode is not None:
        gate, why = mode_gate(profile, gpu)
        return ModeNeed(gate, profile.require_mode, why)
    if profile.on_mode_mismatch != "switch" or not gpu.present:
        return MODE_OPEN
    for hop in hops:
        found = verdict(hop.name)
        if found.usable:
            return MODE_OPEN
        if found.state == "switching":
            return ModeNeed(ModeGate.WAIT, hop.switch_mode, found.reason)
        if found.state == "mode_inactive" and hop.modes is not None \
                and gpu.active_mode not in hop.modes and hop.switch_mode is not None:
            return ModeNeed(ModeGate.MISMATCH, hop.switch_mode, (
                f"profile {profile.name!r} needs GPU mode {hop.switch_mode!r} for {hop.name}; "
                f"the GPU is in {gpu.active_mode or 'no mode'} ({gpu.state})"))
    return MODE_OPEN


def dwell_left(mode_since: float, now: float, min_dwell_s: float) -> float:
    """Seconds before a request may ask for another mode (`[modes] min_mode_dwell_s`)."""
    return max(0.0, mode_since + min_dwell_s - now)


def idle_return_due(gpu: GpuView, idle_mode: str | None, quiet_since: float, now: float,
                    idle_after_s: float) -> bool:
    """Whether to ask gpud for `[modes] idle_mode`: a ready GPU in another mode (never from
    `off` or `failed`: a person's or a fault's), quiet for `idle_after_s`."""
    return (idle_mode is not None and gpu.present and gpu.state == "ready"
            and gpu.active_mode != idle_mode and now - quiet_since >= idle_after_s)


# -- attempts and their outcomes ---------------------------------------------------------

class Failure(StrEnum):
    """Why one hop did not answer."""

    UNAVAILABLE = "unavailable"  # skipped from state: down, starting, mode, switching
    FULL = "full"  # at max_concurrency with a full queue
    CONNECT = "connect"  # connection refused / reset / unreachable
    REFUSED = "refused"  # a sovereignty layer refused the connection
    TIMEOUT = "timeout"  # no first byte in time
    STATUS = "status"  # 5xx, 429 or a backend-side 4xx
    BUDGET = "budget"  # the egress says the provider's budget is exhausted
    EGRESS = "egress"  # the egress socket could not be reached
    BROKEN = "broken"  # the answer broke before anything reached the client


@dataclass(frozen=True, slots=True)
class HopFailure:
    """One failed hop, with a reason fit for a log line and an error message."""

    backend: str
    kind: Failure
    reason: str
    status: int | None = None
    cloud: bool = False

    def describe(self) -> str:
        """`gpu: connection refused` style."""
        return f"{self.backend}: {self.reason}"


# Statuses that say "this backend cannot answer now" rather than "this request is wrong":
# the backend is not authorised (we never forward client keys), does not serve the path or
# model, timed out, or is overloaded.
_BACKEND_SIDE_4XX = frozenset({401, 403, 404, 405, 408, 409, 425, 429, 501})


def status_is_retryable(status: int) -> bool:
    """True when an upstream status means: try the next hop (5xx, 429, backend-side 4xx, 3xx)."""
    if 200 <= status < 300:
        return False
    if status >= 500 or status in _BACKEND_SIDE_4XX:
        return True
    return status < 400  # a redirect is never followed: treat it as a failure


_WAITABLE = frozenset({Failure.UNAVAILABLE, Failure.CONNECT, Failure.TIMEOUT, Failure.FULL})


def t1_should_wait(profile: RouteProfile, failures: Sequence[HopFailure]) -> bool:
    """T1 waits in its queue when every hop failed for a reason that can pass (down, starting,
    another GPU mode, full), not when every backend answered with an error."""
    if profile.tier != "T1":
        return False
    return any(failure.kind in _WAITABLE for failure in failures)


def final_error(profile: RouteProfile, failures: Sequence[HopFailure],
                *, waited: bool = False) -> tuple[ErrorCode, str]:
    """The stable code and message of a request no hop could answer."""
    detail = "; ".join(failure.describe() for failure in failures) or "no backend in the chain"
    if profile.tier == "T1-strict":
        return ErrorCode.BACKEND_FAILED, f"profile {profile.name!r} (T1-strict, no fallback): " \
                                         f"{detail}"
    if profile.tier == "T1":
        if failures and all(f.kind is Failure.STATUS for f in failures):
            return ErrorCode.ALL_BACKENDS_FAILED, (
                f"every local backend of profile {profile.name!r} failed: {detail}")
        suffix = f" after waiting {profile.queue_timeout_s:g}s" if waited else ""
        return ErrorCode.SOVEREIGN_BACKENDS_UNAVAILABLE, (
            f"no local backend of profile {profile.name!r} could answer{suffix} (private work "
            f"never goes to the cloud): {detail}")
    cloud = [f for f in failures if f.cloud]
    if cloud and all(f.kind is Failure.BUDGET for f in cloud):
        return ErrorCode.BUDGET_EXHAUSTED, (
            f"no local backend of profile {profile.name!r} could answer and every cloud budget "
            f"is exhausted: {detail}")
    return ErrorCode.ALL_BACKENDS_FAILED, f"every backend of profile {profile.name!r} failed: " \
                                          f"{detail}"


# -- a preview for /status and `mushishi route` -------------------------------------------

@dataclass(frozen=True, slots=True)
class Preview:
    """Which backend would answer a profile now, and why."""

    would_use: str | None
    reason: str
    hops: tuple[Verdict, ...] = field(default=())


def sovereign_refusal(profile: RouteProfile, hop: Hop, refused: Mapping[str, str]
                      ) -> str | None:
    """Why `profile`'s work may not go to `hop` although it is local (its tenant is not
    confined: `refused`, backend -> why), or None. Only T1 and T1-strict are refused."""
    if not profile.sovereign or not refused:
        return None
    why = refused.get(hop.name)
    return None if why is None else f"refused for {profile.tier}: {why}"


def preview(profile: RouteProfile, verdicts: Mapping[str, Verdict], gpu: GpuView,
            full: Callable[[str], bool] = lambda name: False,
            refused: Mapping[str, str] = MappingProxyType({})) -> Preview:
    """The first usable hop of `profile` now, with the reasons the earlier ones are skipped
    (`refused`: backends T1 work may not go to now, and why)."""
    chain = tuple(verdicts[hop.name] for hop in profile.hops)
    need = mode_need(profile, profile.hops, verdicts.__getitem__, gpu)
    if need.gate is not ModeGate.OPEN:
        action = (f"would ask gpud to switch to {need.mode}"
                  if profile.on_mode_mismatch == "switch" and need.gate is ModeGate.MISMATCH
                  else "would answer mode_mismatch")
        if need.gate is ModeGate.WAIT:
            action = "would wait for the switch"
        return Preview(None, f"{need.why}; {action}", chain)
    skipped = []
    for verdict in chain:
        refusal = sovereign_refusal(profile, verdict.hop, refused)
        if refusal is None and verdict.usable and not full(verdict.hop.name):
            lead = f"{verdict.hop.name} ({verdict.reason})"
            if skipped:
                lead += "; skipped " + "; ".join(skipped)
            return Preview(verdict.hop.name, lead, chain)
        note = refusal or ("at max_concurrency" if verdict.usable else verdict.reason)
        skipped.append(f"{verdict.hop.name}: {note}")
        if not profile.falls_back:
            break
    if profile.tier == "T1":
        outcome = (f"would queue up to {profile.queue_timeout_s:g}s, then answer "
                   "sovereign_backends_unavailable")
    elif profile.tier == "T1-strict":
        outcome = "would answer backend_failed"
    else:
        outcome = "would answer all_backends_failed"
    return Preview(None, f"{outcome}: " + "; ".join(skipped), chain)
