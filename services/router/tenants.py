"""The `tenants` sovereignty layer as the router follows it, and the door it closes.

Every `REFRESH_S` the tenants' published probes are read (the shared reader,
mushishi.shared.tenant_confinement, in a worker thread: the event loop never touches a
file) into `Sovereignty.tenants`, which /status, /ready, the STATUS= line and the metrics
show. A backend served by a tenant whose probe left the box is refused for T1 and
T1-strict work from then on (`RoutingState.set_sovereign_refusals`): a model server that
can reach the internet never sees another private prompt, while T2/T3 work, which may go to
the cloud anyway, still reaches it. Requests waiting in a T1 queue are woken to re-judge.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from mushishi.services.router.state import RoutingState
from mushishi.services.router.status_view import Sovereignty
from mushishi.shared.tasks import cancel_and_wait
from mushishi.shared.tenant_confinement import (
    TenantsLayer,
    read_tenants_layer,
    refused_backends,
)

log = logging.getLogger("mushishi.router")

REFRESH_S = 1.0


class TenantsFollower:
    """Reads the tenants layer every REFRESH_S and applies what it says."""

    def __init__(self, sovereignty: Sovereignty, state: RoutingState,
                 served: Mapping[str, frozenset[str]], run_dir: Path,
                 wall_clock: Callable[[], float]) -> None:
        self.sovereignty = sovereignty
        self.state = state
        self.served = served
        self.run_dir = run_dir
        self.wall_clock = wall_clock
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> TenantsLayer:
        """Read the layer now and apply it."""
        layer = await asyncio.to_thread(read_tenants_layer, self.run_dir,
                                        now=self.wall_clock())
        self.apply(layer)
        return layer

    def apply(self, layer: TenantsLayer) -> None:
        """Show `layer`; refuse T1 work to the backends of unconfined tenants (log changes)."""
        before = self.sovereignty.tenants
        self.sovereignty.tenants = layer
        if layer.verdict != before.verdict:
            level = logging.INFO if layer.verdict else logging.WARNING
            if layer.verdict is False:
                level = logging.ERROR
            log.log(level, "sovereignty layer tenants: %s (%s)",
                    {True: "in force", False: "NOT in force", None: "not known"}[layer.verdict],
                    layer.detail)
        refused = refused_backends(layer, self.served)
        old = self.state.sovereign_refusals
        if refused == old:
            return
        for backend, why in refused.items():
            if old.get(backend) != why:
                log.error("T1 and T1-strict work is refused to backend %s: %s", backend, why,
                          extra={"MUSHISHI_BACKEND": backend})
        for backend in old.keys() - refused.keys():
            log.info("T1 and T1-strict work may go to backend %s again: its tenant is "
                     "confined (or stopped)", backend, extra={"MUSHISHI_BACKEND": backend})
        self.state.set_sovereign_refusals(refused)

    def start(self) -> None:
        """Follow the layer in the background."""
        self._task = asyncio.create_task(self._follow())

    async def close(self) -> None:
        """Stop following."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def _follow(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # keep following: the last reading stays shown meanwhile
                log.exception("cannot read the tenants layer from %s", self.run_dir)
            await asyncio.sleep(REFRESH_S)
