"""What the router says about itself: `GET /status`, `GET /ready`, the sovereignty layers, and
the STATUS= line of `systemctl status`. Read-only: it computes the answers from the routing
state, the cloud share and the counters the HTTP API keeps, when asked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mushishi.services.router.cloud_share import CloudShare
from mushishi.services.router.confinement import Confinement
from mushishi.services.router.core import Preview, RouteProfile, preview
from mushishi.services.router.reload import ReloadStatus
from mushishi.services.router.state import RoutingState
from mushishi.shared.disabled_checks import CONNECT_CHECK_TEST_ENV
from mushishi.shared.metrics import package_version
from mushishi.shared.tenant_confinement import TenantsLayer

# The layers as the summary line names them.
LAYER_NAMES = {"config": "config", "connect_time": "connect-time", "kernel": "kernel",
               "tenants": "tenants"}


def _mark(value: bool | None) -> str:
    return "✓" if value else ("?" if value is None else "✗")


@dataclass(slots=True)
class Traffic:
    """Requests in flight now, and whether the router is draining before it stops."""

    in_flight: int = 0
    draining: bool = False


@dataclass(slots=True)
class Sovereignty:
    """The sovereignty layers as the router knows them: config (always: it refuses to start
    otherwise), the connect-time check, the kernel's confinement (checked at start), and the
    tenants' confinement (followed live: services/router/tenants.py)."""

    connect_check: bool
    confinement: Confinement = field(default_factory=lambda: Confinement(None,
                                                                         "not checked yet"))
    tenants: TenantsLayer = field(default_factory=lambda: TenantsLayer(None, "not read yet",
                                                                       {}))

    def layers(self) -> dict[str, bool | None]:
        """config, connect_time, kernel, tenants: True, False or None (cannot tell)."""
        return {"config": True, "connect_time": self.connect_check,
                "kernel": self.confinement.kernel, "tenants": self.tenants.verdict}

    def as_json(self) -> dict[str, Any]:
        """The `sovereignty` object of /status and /ready."""
        layers = self.layers()
        summary = ", ".join(f"{LAYER_NAMES[name]} {_mark(value)}"
                            for name, value in layers.items())
        detail = self.confinement.detail
        if not self.connect_check:
            detail = f"connect-time check disabled by {CONNECT_CHECK_TEST_ENV} (tests only); " \
                     + detail
        tenants = self.tenants
        return {**layers, "detail": detail, "tenants_detail": tenants.detail,
                "tenant_verdicts": dict(tenants.tenants), "summary": summary}


class StatusView:
    """The answers of /status and /ready, and the status line."""

    def __init__(self, profiles: Mapping[str, RouteProfile], state: RoutingState,
                 cloud_share: CloudShare, sovereignty: Sovereignty, traffic: Traffic,
                 reload: ReloadStatus | None = None) -> None:
        self.profiles = profiles  # replaced by a reload
        self.reload = reload or ReloadStatus()
        self.state = state
        self.cloud_share = cloud_share
        self.sovereignty = sovereignty
        self.traffic = traffic

    def previews(self) -> dict[str, Preview]:
        """Which backend would answer each profile now, and why."""
        state = self.state
        verdicts = {name: state.verdict(name) for name in state.backends}
        return {name: preview(profile, verdicts, state.gpu,
                              lambda backend: state.slots(backend).full,
                              state.sovereign_refusals)
                for name, profile in self.profiles.items()}

    def readiness(self) -> dict[str, Any]:
        """GET /ready: ready when not draining and at least one profile has a backend now
        (a T1 profile whose backends are all refused, their tenants not confined, has none)."""
        previews = self.previews()
        servable = sorted(name for name, p in previews.items() if p.would_use is not None)
        draining = self.traffic.draining
        return {"ready": bool(servable) and not draining, "draining": draining,
                "servable_profiles": servable, "sovereignty": self.sovereignty.as_json()}

    def status(self) -> dict[str, Any]:
        """GET /status: the contract read by the watchdog, `mushishi status` and `route`."""
        previews = self.previews()
        state = self.state
        backends = {}
        for name, backend in state.backends.items():
            verdict = state.verdict(name)
            hop = backend.hop
            backends[name] = {
                "state": verdict.state, "reason": verdict.reason, "local": hop.local,
                "locality": hop.locality,
                "modes": sorted(hop.modes) if hop.modes is not None else None,
                "in_flight": backend.slots.in_flight, "queued": backend.slots.queued,
                "max_concurrency": backend.slots.limit, "model": hop.model,
                "endpoints": sorted(hop.endpoints),
            }
        profiles = {}
        for name, profile in self.profiles.items():
            view = previews[name]
            profiles[name] = {
                "tier": profile.tier, "chain": [hop.name for hop in profile.hops],
                "would_use": view.would_use, "reason": view.reason,
                "queued": state.t1_queued(name),
                "require_mode": profile.require_mode,
                "endpoints": sorted(profile.endpoints),
            }
        gpu = state.gpu
        return {
            "version": package_version(),
            "draining": self.traffic.draining,
            "in_flight": self.traffic.in_flight,
            "sovereignty": self.sovereignty.as_json(),
            "gpu": {"present": gpu.present, "active_mode": gpu.active_mode, "state": gpu.state,
                    "last_switch_reason": gpu.last_switch_reason},
            "backends": backends,
            "profiles": profiles,
            "cloud_share": {name: self.cloud_share.share(name).as_json()
                            for name in self.profiles},
            "reload": self.reload.as_json(),
        }

    def status_line(self) -> str:
        """The STATUS= line shown by `systemctl status`."""
        gpu = self.state.gpu
        mode = f"GPU mode {gpu.active_mode} ({gpu.state})" if gpu.present else "gpud absent"
        serving = "draining" if self.traffic.draining else "serving"
        line = (f"{serving} {len(self.profiles)} profiles; sovereignty: "
                f"{self.sovereignty.as_json()['summary']}; {mode}; "
                f"{self.traffic.in_flight} in flight")
        if self.reload.pending_restart:
            line += f"; restart needed ({', '.join(self.reload.pending_restart)})"
        return line
