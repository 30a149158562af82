"""Active health probes of local backends: up, starting, or down — never a long cooldown.

`GET <origin>/health` (vLLM and llama-server both serve it): 200 is up (then `/v1/models` is
read once to check the configured model is really served, by its alias, and, when the
config sets no `max_concurrency`, llama-server's `GET /props` `total_slots` becomes the
backend's concurrency limit: more would only wait inside llama-server or be dropped by it;
vLLM publishes no `max_num_seqs`), 503 "Loading model" is starting, a refused connection
while the GPU mode is (re)starting is starting, anything else is down. A backend whose GPU
mode is not active is not probed at all.

Busy is not wedged: a /health that times out while the backend keeps sending the router
answers (a byte within `BUSY_WINDOW_S` to a request in flight) leaves it up; on a saturated
box a generating server can be slow to answer /health, not hung.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

from mushishi.services.router.core import Health, Hop
from mushishi.services.router.http1 import ConnectFailed, ResponseBroken, UpstreamError
from mushishi.services.router.state import RoutingState
from mushishi.services.router.upstream import Upstreams, refused_by_policy
from mushishi.shared.log_safe import without_quoted
from mushishi.shared.tasks import cancel_and_wait

log = logging.getLogger("mushishi.router.health")

# After gpud reports a mode change, a backend of that mode refusing connections is taken to
# be starting (vLLM listens only once its engine is up), not down, for this long.
STARTING_GRACE_S = 180.0
# A backend that sent a byte to a request in flight this recently is busy, not hung.
BUSY_WINDOW_S = 10.0
_PROBE_HEADERS = b"Accept: */*\r\nAccept-Encoding: identity\r\n"


def classify_refusal(hop: Hop, state: RoutingState, now: float) -> tuple[Health, str]:
    """A refused connection: 'starting' while the backend's GPU mode is (re)starting."""
    gpu = state.gpu
    if hop.modes is not None and gpu.present and (
        gpu.state == "switching" or now - state.gpu_changed_at < STARTING_GRACE_S
    ):
        return Health.STARTING, "refusing connections while its GPU mode starts"
    return Health.DOWN, "connection refused"


class HealthProber:
    """One probe loop per local backend; `kick(name)` probes at once."""

    def __init__(self, state: RoutingState, upstreams: Upstreams, interval: float,
                 timeout: float, clock: Callable[[], float]) -> None:
        self._state = state
        self._upstreams = upstreams
        self._interval = interval
        self._timeout = timeout
        self._clock = clock
        self._kicks: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        # Probes begun and finished per backend, and an event set when one finishes: what
        # `rejudge` waits on.
        self._begun: dict[str, int] = {}
        self._finished: dict[str, int] = {}
        self._judged: dict[str, asyncio.Event] = {}

    def start(self) -> None:
        """Start probing every local backend."""
        for name, backend in self._state.backends.items():
            if backend.hop.local:
                self._kicks[name] = asyncio.Event()
                self._begun[name] = self._finished[name] = 0
                self._judged[name] = asyncio.Event()
                self._tasks.append(asyncio.create_task(self._loop(name), name=f"probe-{name}"))

    async def close(self) -> None:
        """Stop probing."""
        await cancel_and_wait(*self._tasks)

    def kick(self, name: str | None = None) -> None:
        """Probe `name` (or every backend) now."""
        for key, event in self._kicks.items():
            if name is None or key == name:
                event.set()

    async def rejudge(self, name: str, wait_s: float) -> Health | None:
        """Probe `name` afresh (a probe begun after this call, shared with every other caller
        waiting for one) and return its verdict; None when none came within `wait_s`."""
        if name not in self._kicks:
            return self._state.health(name)
        wanted = self._begun[name] + 1
        self._kicks[name].set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(wait_s, 0.0)):
                while self._finished[name] < wanted:
                    await self._judged[name].wait()
        return self._state.health(name) if self._finished[name] >= wanted else None

    async def _loop(self, name: str) -> None:
        kick = self._kicks[name]
        while True:
            kick.clear()
            self._begun[name] += 1
            try:
                await self.probe(name)
            except Exception:  # a probe bug must not stop probing
                log.exception("probing backend %s failed", name, extra={"MUSHISHI_BACKEND": name})
            self._finished[name] = self._begun[name]
            judged, self._judged[name] = self._judged[name], asyncio.Event()
            judged.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await kick.wait()

    def _mode_inactive(self, hop: Hop) -> bool:
        gpu = self._state.gpu
        return (hop.modes is not None and gpu.present and gpu.state != "switching"
                and gpu.active_mode not in hop.modes)

    async def probe(self, name: str) -> Health:
        """Probe backend `name` once and record the result."""
        backend = self._state.backends[name]
        hop = backend.hop
        if self._mode_inactive(hop):
            return backend.health  # another GPU mode: no round trip, judged by mode alone
        target = self._upstreams.endpoint(name).health
        assert target is not None
        health, reason = Health.DOWN, "unknown"
        try:
            async with asyncio.timeout(self._timeout):
                response = await target.pool.request("GET", target.path, _PROBE_HEADERS)
                body = await response.read()
            if response.status == 200:
                health, reason = Health.UP, "healthy"
                if backend.health is not Health.UP:
                    health, reason = await self._check_model(hop)
                    if health is Health.UP and hop.max_concurrency is None:
                        await self._learn_slots(hop)
            elif response.status == 503 and b"loading" in body.lower():
                health, reason = Health.STARTING, "loading model"
            else:
                health, reason = Health.DOWN, f"/health answered {response.status}"
        except TimeoutError:
            answering = self._state.answering(name, BUSY_WINDOW_S)
            if answering:
                health, reason = Health.UP, (f"busy: /health took over {self._timeout:g}s, "
                                             f"answering {answering} request(s)")
            else:
                health, reason = Health.DOWN, (f"no answer to /health in {self._timeout:g}s "
                                               "(hung?)")
        except ConnectFailed as error:
            layer = refused_by_policy(error)
            if layer is not None:
                health, reason = Health.DOWN, f"refused by the {layer} sovereignty check"
            else:
                health, reason = classify_refusal(hop, self._state, self._clock())
        except (ResponseBroken, OSError) as error:
            health, reason = Health.DOWN, f"probe failed: {without_quoted(str(error))}"
        self._state.set_health(name, health, reason)
        return health

    async def _learn_slots(self, hop: Hop) -> None:
        """llama-server's slot count (`GET /props` `total_slots`) as the backend's limit."""
        target = self._upstreams.endpoint(hop.name).props
        if target is None:
            return
        try:
            async with asyncio.timeout(self._timeout):
                response = await target.pool.request("GET", target.path, _PROBE_HEADERS)
                body = await response.read()
            slots = json.loads(body).get("total_slots") if response.status == 200 else None
        except (TimeoutError, UpstreamError, OSError, ValueError, AttributeError):
            return
        limit = self._state.slots(hop.name)
        if isinstance(slots, int) and not isinstance(slots, bool) and slots >= 1 \
                and slots != limit.limit:
            limit.set_limit(slots)
            log.info("backend %s has %d slots (llama-server /props total_slots): at most %d "
                     "requests in flight, the rest wait in the router (set "
                     "backends.%s.max_concurrency to choose)", hop.name, slots, slots,
                     hop.name, extra={"MUSHISHI_BACKEND": hop.name})

    async def _check_model(self, hop: Hop) -> tuple[Health, str]:
        """A healthy backend must serve the configured model name (its alias, not a path)."""
        target = self._upstreams.endpoint(hop.name).models
        if target is None:
            return Health.UP, "healthy"
        try:
            async with asyncio.timeout(self._timeout):
                response = await target.pool.request("GET", target.path, _PROBE_HEADERS)
                body = await response.read()
            if response.status != 200:
                return Health.UP, "healthy (model list unavailable)"
            listing = json.loads(body)
        except (TimeoutError, UpstreamError, OSError, ValueError):
            return Health.UP, "healthy (model list unavailable)"
        served = [str(entry.get("id")) for entry in listing.get("data", [])
                  if isinstance(entry, dict)] if isinstance(listing, dict) else []
        if served and hop.model not in served:
            return Health.DOWN, (f"serves {', '.join(served)}, not {hop.model!r} "
                                 f"(backends.{hop.name}.model)")
        return Health.UP, "healthy"
