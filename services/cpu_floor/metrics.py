"""The floor's Prometheus metrics (`mushishi_cpu_floor_*`), on one registry."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mushishi.shared.metrics import new_registry

HEALTH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
SMOKE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60)


class FloorMetrics:
    """Every metric of mushishi-cpu-floor."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else new_registry("cpu_floor")
        r = self.registry
        self.up = Gauge(
            "mushishi_cpu_floor_up",
            "1 while llama-server is ready and passing health checks and smoke completions.",
            registry=r)
        self.restarts = Counter(
            "mushishi_cpu_floor_restarts",
            "Unexpected stops of the floor that systemd restarts, by reason (kept across "
            "restarts in the StateDirectory).", ["reason"], registry=r)
        self.health_latency = Histogram(
            "mushishi_cpu_floor_health_latency_seconds",
            "Latency of llama-server's GET /health.", buckets=HEALTH_BUCKETS, registry=r)
        self.health_checks = Counter(
            "mushishi_cpu_floor_health_checks",
            "Health checks by result (ok, busy, unhealthy, timeout, error).", ["result"],
            registry=r)
        self.smoke_latency = Histogram(
            "mushishi_cpu_floor_smoke_latency_seconds",
            "Latency of the answered smoke chat completions.", buckets=SMOKE_BUCKETS,
            registry=r)
        self.smoke_tokens_per_second = Gauge(
            "mushishi_cpu_floor_smoke_tokens_per_second",
            "Decode speed of the latest answered smoke completion.", registry=r)
        self.smoke_completions = Counter(
            "mushishi_cpu_floor_smoke_completions",
            "Smoke completions by verdict (ok, busy, timeout, error).", ["result"],
            registry=r)
        self.load_seconds = Gauge(
            "mushishi_cpu_floor_load_seconds",
            "Seconds from starting llama-server to READY in the current run.", registry=r)
        for result in ("ok", "busy", "unhealthy", "timeout", "error"):
            self.health_checks.labels(result=result)
        for result in ("ok", "busy", "timeout", "error"):
            self.smoke_completions.labels(result=result)

    def load_restart_counts(self, counts: Mapping[str, int]) -> None:
        """Carry the counts recorded by earlier runs into this run's counter."""
        for reason, count in counts.items():
            if count > 0:
                self.restarts.labels(reason=reason).inc(count)
