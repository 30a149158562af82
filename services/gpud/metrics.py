"""gpud's Prometheus metrics, on a registry of its own."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mushishi.services.gpud.core import FAILED, OFF, READY, SWITCHING
from mushishi.shared.gpu import MIB, GpuSnapshot

STATES = (READY, SWITCHING, FAILED, OFF)
# Orchestration phases are milliseconds; whole switches include tenants loading models.
PHASE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SWITCH_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200)


class GpudMetrics:
    """Active mode, state, switches and refusals, and the GPU's own readings."""

    def __init__(self, registry: CollectorRegistry, modes: Iterable[str]) -> None:
        self.modes = sorted(modes)
        self.mode = Gauge("mushishi_gpud_mode_active", "1 for the active GPU mode.", ["mode"],
                          registry=registry)
        self.state = Gauge("mushishi_gpud_state", "1 for gpud's current state.", ["state"],
                           registry=registry)
        self.switches = Counter("mushishi_gpud_switches_total",
                                "Finished switches, by result (ok, failed) and origin "
                                "(api: SwitchMode; systemd: a direct systemctl isolate).",
                                ["result", "origin"], registry=registry)
        self.switch_seconds = Histogram(
            "mushishi_gpud_switch_duration_seconds",
            "Whole switches, from their start to ModeChanged (or failure), tenants' start "
            "included.", ["result"], buckets=SWITCH_BUCKETS, registry=registry)
        self.phase_seconds = Histogram(
            "mushishi_gpud_switch_phase_seconds",
            "gpud's own overhead in a switch: `call_to_isolate` (SwitchMode received to "
            "isolate job queued), `settle_to_signal` (last job done to ModeChanged sent).",
            ["phase"], buckets=PHASE_BUCKETS, registry=registry)
        self.refusals = Counter("mushishi_gpud_refusals_total",
                                "SwitchMode and HoldMode calls refused, by reason.",
                                ["reason"], registry=registry)
        self.holds = Gauge("mushishi_gpud_holds", "Holds in place.", registry=registry)
        self.vram_total = Gauge("mushishi_gpud_vram_total_bytes", "GPU memory.",
                                registry=registry)
        self.vram_used = Gauge("mushishi_gpud_vram_used_bytes", "GPU memory in use.",
                               registry=registry)
        self.utilisation = Gauge("mushishi_gpud_gpu_utilisation_ratio",
                                 "GPU utilisation, 0 to 1.", registry=registry)
        self.temperature = Gauge("mushishi_gpud_gpu_temperature_celsius", "GPU temperature.",
                                 registry=registry)
        self.power = Gauge("mushishi_gpud_gpu_power_watts", "GPU power draw.",
                           registry=registry)
        self.power_limit = Gauge("mushishi_gpud_gpu_power_limit_watts",
                                 "GPU power limit in force (NaN when unknown).",
                                 registry=registry)
        self.throttled = Gauge("mushishi_gpud_gpu_throttled",
                               "1 while the GPU is throttled (power, thermal, hardware).",
                               registry=registry)
        self.probe_errors = Counter("mushishi_gpud_gpu_read_errors_total",
                                    "Failed GPU readings.", registry=registry)
        for mode in self.modes:
            self.mode.labels(mode=mode).set(0)
        for state in STATES:
            self.state.labels(state=state).set(0)
        for phase in ("call_to_isolate", "settle_to_signal"):
            self.phase_seconds.labels(phase=phase)

    def show_mode(self, active_mode: str, state: str) -> None:
        """Mark the active mode and state."""
        for mode in self.modes:
            self.mode.labels(mode=mode).set(1 if mode == active_mode else 0)
        for name in STATES:
            self.state.labels(state=name).set(1 if name == state else 0)

    def show_gpu(self, snapshot: GpuSnapshot) -> None:
        """Export one GPU reading in base units."""
        self.vram_total.set(snapshot.total_mib * MIB)
        self.vram_used.set(snapshot.used_mib * MIB)
        self.utilisation.set(snapshot.util_percent / 100)
        self.temperature.set(snapshot.temperature_c)
        self.power.set(snapshot.power_w)
        self.power_limit.set(float("nan") if snapshot.power_limit_w is None
                             else snapshot.power_limit_w)
        self.throttled.set(1 if snapshot.throttled else 0)
