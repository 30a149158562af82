"""Live routing state: backend health, concurrency slots with bounded FIFO queues, the T1
queues, and a change signal that queued requests wait on. Decisions about it live in `core`."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mushishi.services.router.core import GPU_ABSENT, GpuView, Health, Hop, Verdict, judge_hop


class QueueFull(Exception):
    """A bounded queue had no room."""


class Slots:
    """`limit` requests in flight at once (None: unlimited) and a FIFO of at most `queue_max`
    waiters. A released slot goes straight to the oldest waiter."""

    def __init__(self, limit: int | None, queue_max: int,
                 on_free: Callable[[], None] = lambda: None) -> None:
        self.limit = limit
        self.queue_max = queue_max
        self._on_free = on_free  # a slot went free with nobody in this FIFO
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        """Requests waiting for a slot."""
        return sum(1 for waiter in self._waiters if not waiter.done())

    @property
    def full(self) -> bool:
        """True when a new request would have to wait."""
        return self.limit is not None and self.in_flight >= self.limit

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody is queued ahead."""
        if self.full or (self._waiters and self.queued):
            return False
        self.in_flight += 1
        return True

    async def acquire(self, wait_s: float) -> bool:
        """Wait (FIFO) up to `wait_s` for a slot; False on timeout; QueueFull if no room."""
        if self.try_acquire():
            return True
        if self.queued >= self.queue_max:
            raise QueueFull
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(wait_s):
                await waiter
        except TimeoutError:
            # True when handed a slot at the very moment the timer fired.
            return waiter.done() and not waiter.cancelled()
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # pass on the slot we were handed
            raise
        finally:
            if not waiter.done():
                waiter.cancel()
            self._prune()
        return True

    def set_limit(self, limit: int | None) -> None:
        """A new limit (learned from the backend); waiters take the slots it frees."""
        self.limit = limit
        while self._waiters and not self.full:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)

    def release(self) -> None:
        """Give the slot to the oldest waiter, or free it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.in_flight -= 1
        self._on_free()

    def _prune(self) -> None:
        while self._waiters and self._waiters[0].done():
            self._waiters.popleft()


@dataclass(slots=True)
class BackendState:
    """What the router knows about one backend now."""

    hop: Hop
    slots: Slots
    health: Health = Health.UNKNOWN
    reason: str = ""
    heard_at: float = float("-inf")  # when its last answer byte reached the router


class RoutingState:
    """What routing reads now: each backend's health and slots, the GPU mode gpud last
    reported, the T1 queue of each profile, and a signal that fires on every change."""

    def __init__(self, hops: Mapping[str, Hop], clock: Callable[[], float]) -> None:
        self._clock = clock
        self.backends: dict[str, BackendState] = {
            name: BackendState(hop, Slots(hop.max_concurrency, hop.queue_max, self._slot_freed),
                               Health.UP if not hop.local else Health.UNKNOWN)
            for name, hop in hops.items()
        }
        self.gpu: GpuView = GPU_ABSENT
        self.gpu_changed_at = 0.0
        # When the active mode last changed while gpud was followed (-inf: not seen since
        # the router started): what `[modes] min_mode_dwell_s` counts from.
        self.mode_since = float("-inf")
        self.last_gpu_work = float("-inf")  # when a request to a backend with modes ended
        self._changed = asyncio.Event()
        # The router drains (SIGTERM): nothing waits for a backend any more, it is answered.
        self.stopping = False
        self._t1_queued: dict[str, int] = {}  # profile -> requests waiting for a local backend
        self._t1_waiting = 0  # their sum: read on every released slot
        self._verdicts: dict[str, Verdict] = {}  # judged since the last change
        # backend -> why T1/T1-strict work may not go to it (its tenant is not confined)
        self.sovereign_refusals: Mapping[str, str] = {}
        self.on_change: list[Callable[[str, Health, Health, str], None]] = []

    def verdict(self, name: str) -> Verdict:
        """Judge backend `name` now."""
        found = self._verdicts.get(name)
        if found is None:
            state = self.backends[name]
            found = self._verdicts[name] = judge_hop(state.hop, state.health, state.reason,
                                                     self.gpu)
        return found

    def health(self, name: str) -> Health:
        """Backend `name`'s health as last probed or seen by a request."""
        return self.backends[name].health

    def slots(self, name: str) -> Slots:
        """Backend `name`'s concurrency slots (in flight, queued)."""
        return self.backends[name].slots

    def heard_from(self, name: str) -> None:
        """Backend `name` sent a byte of an answer (its first, or a stream's next)."""
        self.backends[name].heard_at = self._clock()

    def answering(self, name: str, within_s: float) -> int:
        """Requests in flight at backend `name` if it sent the router an answer's byte within
        `within_s` (busy, not wedged), else 0."""
        backend = self.backends[name]
        if self._clock() - backend.heard_at > within_s:
            return 0
        return backend.slots.in_flight

    def t1_queued(self, profile: str) -> int:
        """Requests of a T1 profile waiting in its queue for a local backend."""
        return self._t1_queued.get(profile, 0)

    def join_t1_queue(self, profile: str) -> None:
        """A request of `profile` starts waiting for a local backend."""
        self._t1_queued[profile] = self._t1_queued.get(profile, 0) + 1
        self._t1_waiting += 1

    def leave_t1_queue(self, profile: str) -> None:
        """A request of `profile` stops waiting (served, refused or gone)."""
        self._t1_queued[profile] -= 1
        self._t1_waiting -= 1

    def _slot_freed(self) -> None:
        """A request in a T1 queue may be waiting for this slot (its FIFO was full)."""
        if self._t1_waiting:
            self.notify()

    def set_health(self, name: str, health: Health, reason: str) -> None:
        """Record a backend's health; wake waiters when it changes."""
        state = self.backends[name]
        old = state.health
        if state.reason != reason:
            state.reason = reason
            self._verdicts.pop(name, None)
        if old is health:
            return
        state.health = health
        self._verdicts.pop(name, None)
        for callback in self.on_change:
            callback(name, old, health, reason)
        self.notify()

    def set_gpu(self, view: GpuView) -> None:
        """Record what gpud says; wake waiters when it changes."""
        if view == self.gpu:
            return
        if view.active_mode != self.gpu.active_mode or view.state != self.gpu.state:
            self.gpu_changed_at = self._clock()
        if view.present and self.gpu.present and view.active_mode != self.gpu.active_mode:
            self.mode_since = self._clock()
        self.gpu = view
        self._verdicts.clear()
        self.notify()

    def set_sovereign_refusals(self, refused: Mapping[str, str]) -> None:
        """Refuse T1 and T1-strict work to these backends (and why); wake waiters."""
        if refused == self.sovereign_refusals:
            return
        self.sovereign_refusals = dict(refused)
        self.notify()

    def stop_waiting(self) -> None:
        """The router stops: wake every request waiting in a T1 queue, to be answered now
        (their clients retry against the next process) instead of cut at the drain timeout."""
        self.stopping = True
        self.notify()

    def notify(self) -> None:
        """Wake everything waiting for a change."""
        self._changed.set()
        self._changed = asyncio.Event()

    def gpu_work_ended(self, name: str) -> None:
        """A request to backend `name` ended: GPU work when it runs in GPU modes (what the
        idle return counts quiet time from; the CPU floor and cloud hops are not)."""
        if self.backends[name].hop.modes is not None:
            self.last_gpu_work = self._clock()

    def gpu_busy(self) -> bool:
        """Requests in flight or queued on a backend with GPU modes, or queued in a T1
        profile's queue."""
        return any(state.hop.modes is not None and (state.slots.in_flight or state.slots.queued)
                   for state in self.backends.values()) or self._t1_waiting > 0

    async def wait_change(self, wait_s: float) -> bool:
        """Wait up to `wait_s` for any change; True if one came."""
        event = self._changed
        try:
            async with asyncio.timeout(max(wait_s, 0.0)):
                await event.wait()
        except TimeoutError:
            return False
        return True
