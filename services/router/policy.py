"""The chain policy: which hop a request tries next, and when it waits or gives up.

The chain comes from the compiled route table only. The GPU mode is checked first: a
T1-strict profile's `require_mode`, or, for a profile of any tier with `on_mode_mismatch =
"switch"`, the mode of the first hop of its chain in another mode (open, wait for a switch,
ask gpud for one, or refuse: T1-strict answers mode_mismatch, the other tiers take their
next hop). A request that waited for a switch then waits for its backend's first probe in
the new mode, so the verdict it routes on is not the one from before the switch. Each hop is
judged from state, with no round trip for a backend known down or in another GPU mode; a hop at
`max_concurrency` overflows to the next usable one or waits in its FIFO; a hop that fails
(`relay`) moves the request on where the tier allows, unless it failed before its first byte
and no later local hop can take the request: then it is tried again once a fresh probe finds
it up (`_retried`: T1 and T1-strict until the queue deadline, T2/T3 once before the cloud).
A T2/T3 request that overflowed past a busy local hop and that every later hop failed goes
back to wait for that hop's next free slot until the queue deadline (`_back_to_overflowed`).
When no hop of a T1 profile can answer for a reason that can pass, the request waits in the
profile's queue for any change; the final error of a request nothing answered is
`core.final_error`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from mushishi.services.router.accounting import Accounting
from mushishi.services.router.call import Call, RequestBody
from mushishi.services.router.core import (
    Failure,
    Health,
    Hop,
    HopFailure,
    ModeGate,
    final_error,
    mode_need,
    sovereign_refusal,
    t1_should_wait,
)
from mushishi.services.router.errors import ErrorCode, Rejection
from mushishi.services.router.mode_switch import ModeSwitcher, SwitchRefused
from mushishi.services.router.relay import Relay
from mushishi.services.router.state import QueueFull, RoutingState

log = logging.getLogger("mushishi.router.request")

# While a request waits for its backend's first healthy probe after a switch, it has the
# backend probed this often.
FIRST_PROBE_EVERY_S = 1.0
# A hop that failed before its first byte is tried again after this pause (doubling up to the
# maximum) and a fresh probe that finds it up.
RETRY_BACKOFF_S = 0.05
RETRY_BACKOFF_MAX_S = 1.0
_TRANSIENT = frozenset({Failure.BROKEN, Failure.CONNECT})
# The reason of a busy hop a falling-back request passed over for a later one.
OVERFLOWED = "at max_concurrency"


@dataclass(frozen=True, slots=True)
class Forwarding:
    """Everything `forward` needs, built once by the wiring."""

    state: RoutingState
    relay: Relay
    accounting: Accounting
    switcher: ModeSwitcher | None  # None when gpud is not followed
    clock: Callable[[], float]
    # Probe a backend afresh: its health then, or None when no probe finished in time.
    rejudge: Callable[[str, float], Awaitable[Health | None]]


async def forward(forwarding: Forwarding, call: Call, body: RequestBody,
                  request: web.Request) -> web.StreamResponse:
    """Answer `call` from its profile's chain, or raise Rejection."""
    profile = call.profile
    state = forwarding.state
    deadline = forwarding.clock() + profile.queue_timeout_s
    if (profile.require_mode is not None or profile.on_mode_mismatch == "switch") \
            and await _pass_mode_gate(forwarding, call, deadline):
        await _await_first_probe(forwarding, call, deadline)
    queued = False
    try:
        while True:
            failures_before = len(call.failures)
            response = await _one_pass(forwarding, call, body, request, deadline)
            if response is None and not profile.sovereign:
                response = await _back_to_overflowed(forwarding, call, body, request, deadline,
                                                     call.failures[failures_before:])
            if response is not None:
                return response
            this_pass = call.failures[failures_before:]
            remaining = deadline - forwarding.clock()
            if not t1_should_wait(profile, this_pass) or remaining <= 0 or state.stopping:
                failures = this_pass or call.failures
                code, message = final_error(profile, failures, waited=queued)
                if state.stopping:  # answered now rather than cut when the drain times out
                    message = f"the router is restarting or stopping, retry: {message}"
                # Nothing was tried (all down, busy or in another mode): unavailable, not bad.
                untried = all(f.kind in (Failure.UNAVAILABLE, Failure.FULL) for f in failures)
                raise Rejection(code, message, status=503 if untried and code in (
                    ErrorCode.BACKEND_FAILED, ErrorCode.ALL_BACKENDS_FAILED) else None)
            if not queued:
                if state.t1_queued(profile.name) >= profile.queue_max:
                    raise Rejection(ErrorCode.SOVEREIGN_BACKENDS_UNAVAILABLE, (
                        f"no local backend of profile {profile.name!r} can answer now and its "
                        f"queue is full ({profile.queue_max} waiting; profiles.{profile.name}"
                        f".queue_max): " + "; ".join(f.describe() for f in this_pass)))
                state.join_t1_queue(profile.name)
                queued = True
                log.info("queued: no local backend of %s can answer now (%s)", profile.name,
                         "; ".join(f.describe() for f in this_pass))
            async with waiting(call, "a local backend"):
                await state.wait_change(remaining)
    finally:
        if queued:
            state.leave_t1_queue(profile.name)


@contextlib.asynccontextmanager
async def waiting(call: Call, what: str) -> AsyncIterator[None]:
    """Time the request waits (a switch, a queue): not router overhead, and, for a stream,
    SSE comment lines saying what it waits for (`feedback.WaitFeedback`)."""
    with call.not_overhead():
        if call.feedback is None:
            yield
        else:
            async with call.feedback.waiting(what):
                yield


async def _pass_mode_gate(forwarding: Forwarding, call: Call, deadline: float) -> bool:
    """The GPU mode the request needs: open, wait for a switch, ask for one, or (T1-strict)
    refuse. True when the request waited for a switch."""
    profile = call.profile
    state = forwarding.state
    asked = waited = False
    while True:
        need = mode_need(profile, call.hops, state.verdict, state.gpu)
        if need.gate is ModeGate.OPEN:
            return waited
        remaining = deadline - forwarding.clock()
        if remaining <= 0 or state.stopping:  # the router drains: no more waiting
            if not profile.falls_back:
                raise Rejection(ErrorCode.MODE_MISMATCH,
                                f"{need.why} (waited {profile.queue_timeout_s:g}s)")
            return waited
        if need.gate is ModeGate.MISMATCH:
            if asked or profile.on_mode_mismatch != "switch" or not state.gpu.present \
                    or forwarding.switcher is None:
                if not profile.falls_back:
                    raise Rejection(ErrorCode.MODE_MISMATCH, need.why)
                return waited  # the other tiers take the chain as it is
            asked = waited = True
            assert need.mode is not None
            try:
                async with waiting(call, f"mode {need.mode}"):
                    await forwarding.switcher.request(profile.name, need.mode, remaining)
            except SwitchRefused as refused:
                if not profile.falls_back:
                    raise Rejection(ErrorCode.MODE_MISMATCH, (
                        f"{need.why}; no switch to {need.mode}: {refused.reason}")) from None
                log.info("no switch to %s for %s (%s): taking the chain as it is", need.mode,
                         profile.name, refused.reason)
                return False
            continue
        # A switch is under way. T1-strict waits for it, whoever started it; the other
        # tiers wait only for a switch asked for a request to their mode, and otherwise
        # take the chain as it is.
        if profile.falls_back and (forwarding.switcher is None
                                   or not forwarding.switcher.awaiting(need.mode)):
            return waited
        waited = True
        async with waiting(call, f"mode {need.mode or 'switch'}"):
            await state.wait_change(remaining)


async def _await_first_probe(forwarding: Forwarding, call: Call, deadline: float) -> None:
    """After a switch: wait (within the queue timeout) for a fresh probe of the first hop of
    the chain that runs in the new mode that does not find it starting (every
    FIRST_PROBE_EVERY_S), so that the pass routes on that verdict, not on the one from
    before the switch."""
    state = forwarding.state
    gpu = state.gpu
    hop = next((hop for hop in call.hops if hop.modes is not None
                and gpu.active_mode in hop.modes), None)
    if hop is None:
        return
    async with waiting(call, f"{hop.name} to start in mode {gpu.active_mode}"):
        while True:
            health = await forwarding.rejudge(hop.name, deadline - forwarding.clock())
            pause = min(FIRST_PROBE_EVERY_S, deadline - forwarding.clock())
            if health is not Health.STARTING or pause <= 0 or state.gpu != gpu:
                return
            await asyncio.sleep(pause)


async def _one_pass(forwarding: Forwarding, call: Call, body: RequestBody,
                    request: web.Request, deadline: float) -> web.StreamResponse | None:
    """Try each hop once; a response, or None with the failures recorded in `call`."""
    profile = call.profile
    state = forwarding.state
    for index, hop in enumerate(call.hops):
        verdict = state.verdict(hop.name)
        if not verdict.usable:
            call.hop_failed(HopFailure(hop.name, Failure.UNAVAILABLE, verdict.reason))
            if not profile.falls_back:
                return None
            continue
        if profile.sovereign and not hop.local:
            # Unreachable by construction (config check + compile_table); refuse regardless.
            forwarding.accounting.sovereignty_refused("router")
            log.error("refused to send %s work to non-local backend %s", profile.tier, hop.name)
            call.hop_failed(HopFailure(hop.name, Failure.REFUSED, "not local"))
            continue
        refusal = sovereign_refusal(profile, hop, state.sovereign_refusals)
        if refusal is not None:
            # Its tenant's probe left the box (services/router/tenants.py).
            forwarding.accounting.sovereignty_refused("tenants")
            call.hop_failed(HopFailure(hop.name, Failure.REFUSED, refusal))
            if not profile.falls_back:
                return None
            continue
        slots = state.slots(hop.name)
        if not slots.try_acquire():
            if profile.falls_back and _later_usable(state, call, index):
                call.hop_failed(HopFailure(hop.name, Failure.FULL, OVERFLOWED))
                _fall_back(forwarding, call, hop, Failure.FULL.value)
                continue
            if not await _wait_for_slot(forwarding, call, hop, deadline):
                if not profile.falls_back:
                    return None
                continue
        answer = await _attempt_holding(forwarding, call, index, body, request, deadline)
        if not isinstance(answer, HopFailure):
            return answer
        if not profile.falls_back:
            return None
    return None


async def _back_to_overflowed(forwarding: Forwarding, call: Call, body: RequestBody,
                              request: web.Request, deadline: float,
                              this_pass: list[HopFailure]) -> web.StreamResponse | None:
    """A T2/T3 request that overflowed past a busy local hop, and that every later hop then
    failed (a provider cooling down, out of budget, erroring), waits in that hop's FIFO for
    its next free slot until `deadline` rather than fail; the first such hop still usable."""
    overflowed = {f.backend for f in this_pass if f.kind is Failure.FULL
                  and f.reason == OVERFLOWED}
    state = forwarding.state
    for index, hop in enumerate(call.hops):
        if hop.name not in overflowed or not hop.local or not _usable(state, call, hop):
            continue
        log.info("waiting for a free slot of backend %s: the request overflowed past it and "
                 "every later hop failed", hop.name, extra={"MUSHISHI_BACKEND": hop.name})
        if not await _wait_for_slot(forwarding, call, hop, deadline):
            return None
        answer = await _attempt_holding(forwarding, call, index, body, request, deadline)
        return None if isinstance(answer, HopFailure) else answer
    return None


async def _wait_for_slot(forwarding: Forwarding, call: Call, hop: Hop, deadline: float) -> bool:
    """Wait in `hop`'s FIFO until `deadline`; False (the failure recorded) when no slot came."""
    try:
        async with waiting(call, f"a free slot on {hop.name}"):
            got = await forwarding.state.slots(hop.name).acquire(deadline - forwarding.clock())
    except QueueFull:
        got = False
        reason = f"at max_concurrency with a full queue (backends.{hop.name}.queue_max)"
    else:
        reason = "no free slot in time"
    if not got:
        call.hop_failed(HopFailure(hop.name, Failure.FULL, reason))
    return got


async def _attempt_holding(forwarding: Forwarding, call: Call, index: int, body: RequestBody,
                           request: web.Request, deadline: float
                           ) -> web.StreamResponse | HopFailure:
    """Relay `call` to hop `index` with its slot held (released after), tried again when it
    fails in a way `_retried` may mend; a failure is recorded."""
    hop = call.hops[index]
    try:
        answer = await forwarding.relay.attempt(call, hop, body, request)
        if isinstance(answer, HopFailure) and answer.kind in _TRANSIENT and hop.local:
            answer = await _retried(forwarding, call, index, body, request, deadline, answer)
    finally:
        forwarding.state.slots(hop.name).release()
        forwarding.state.gpu_work_ended(hop.name)
    if isinstance(answer, HopFailure):
        call.hop_failed(answer)
        _fall_back(forwarding, call, hop, answer.kind.value)
    return answer


async def _retried(forwarding: Forwarding, call: Call, index: int, body: RequestBody,
                   request: web.Request, deadline: float, failure: HopFailure
                   ) -> web.StreamResponse | HopFailure:
    """Local hop `index` failed before its first byte (`failure`; its slot held). When no
    later local hop can take the request, it is tried again after a short backoff and a
    fresh probe that finds it up: T1 and T1-strict until `deadline`, other tiers once (before
    the cloud). A probe that finds it down or starting makes it unavailable (a T1 request
    then waits in its queue). The common path, an answer at the first try, never comes here."""
    hop = call.hops[index]
    left = 0 if _later_local_free(forwarding.state, call, index) else \
        math.inf if call.profile.sovereign else 1
    backoff = RETRY_BACKOFF_S
    answer: web.StreamResponse | HopFailure = failure
    while True:
        assert isinstance(answer, HopFailure)
        if left <= 0 or deadline - forwarding.clock() <= backoff:
            return answer
        with call.not_overhead():
            await asyncio.sleep(backoff)
            health = await forwarding.rejudge(hop.name, deadline - forwarding.clock())
        if health is None:
            return answer  # no fresh verdict before the deadline
        if health is not Health.UP:
            now = forwarding.state.verdict(hop.name).reason
            return HopFailure(hop.name, Failure.UNAVAILABLE, answer.reason if now == answer.reason
                              else f"{answer.reason}; then {now}")
        left -= 1
        backoff = min(backoff * 2, RETRY_BACKOFF_MAX_S)
        call.retried()
        log.info("trying backend %s again for the same request: it failed before the first "
                 "byte (%s) and a fresh probe finds it up", hop.name, answer.reason,
                 extra={"MUSHISHI_BACKEND": hop.name})
        answer = await forwarding.relay.attempt(call, hop, body, request)
        if not isinstance(answer, HopFailure) or answer.kind not in _TRANSIENT:
            return answer


def _later_local_free(state: RoutingState, call: Call, index: int) -> bool:
    """A later local hop can take the request now (usable, not refused, a slot free)."""
    return any(hop.local and not state.slots(hop.name).full for hop in call.hops[index + 1:]
               if _usable(state, call, hop))


def _later_usable(state: RoutingState, call: Call, index: int) -> bool:
    return any(_usable(state, call, hop) for hop in call.hops[index + 1:])


def _usable(state: RoutingState, call: Call, hop: Hop) -> bool:
    return state.verdict(hop.name).usable \
        and sovereign_refusal(call.profile, hop, state.sovereign_refusals) is None


def _fall_back(forwarding: Forwarding, call: Call, hop: Hop, reason: str) -> None:
    call.fell_back()
    forwarding.accounting.fell_back(call.profile.name, hop.name, reason)
