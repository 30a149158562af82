"""The router's Prometheus metrics (`mushishi_router_*`), on its own registry.

Counters and histograms are updated on the hot path through cached label children; states
(backends, GPU mode, sovereignty layers, cloud share, queues) are read at scrape time by a
collector, so nothing is recomputed per request.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mushishi.services.router.status_view import StatusView
from mushishi.shared.metrics import LabelChildren

BACKEND_STATES = ("up", "unknown", "starting", "down", "switching", "mode_inactive", "cloud")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)


class RouterMetrics(LabelChildren):
    """Every metric the router updates per request."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.requests = Counter(
            "mushishi_router_requests_total",
            "Requests answered, by profile, backend that answered (none) and outcome "
            "(success, client_error or a stable error code).",
            ["profile", "backend", "outcome"], registry=registry)
        self.fallbacks = Counter(
            "mushishi_router_fallbacks_total",
            "Hops abandoned for the next one, by profile, backend and reason.",
            ["profile", "backend", "reason"], registry=registry)
        self.sovereignty_refusals = Counter(
            "mushishi_router_sovereignty_refusals_total",
            "Connections or hops refused because they would leave the local networks, by layer "
            "(connect-time, kernel, router).",
            ["layer"], registry=registry)
        self.first_byte = Histogram(
            "mushishi_router_time_to_first_byte_seconds",
            "From the request's arrival to the first byte of the answering backend.",
            ["profile", "backend"], buckets=LATENCY_BUCKETS, registry=registry)
        self.duration = Histogram(
            "mushishi_router_request_duration_seconds",
            "From the request's arrival to the end of its answer.",
            ["profile", "backend"], buckets=LATENCY_BUCKETS, registry=registry)
        self.overhead = Histogram(
            "mushishi_router_overhead_seconds",
            "Time the router itself added to a request (auth, parsing, routing, relaying), "
            "excluding queues and failed hops.",
            buckets=OVERHEAD_BUCKETS, registry=registry)
        self.tokens = Counter(
            "mushishi_router_tokens_total",
            "Tokens reported by backends' usage, by profile, backend and kind "
            "(prompt, completion).",
            ["profile", "backend", "kind"], registry=registry)


class RouterStateCollector(Collector):
    """Gauges read from the router's live state at scrape time."""

    def __init__(self, view: StatusView) -> None:
        self._view = view

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Backend states, in-flight and queued requests, GPU mode, sovereignty, cloud share."""
        view = self._view
        routing = view.state
        state = GaugeMetricFamily(
            "mushishi_router_backend_state",
            "1 for each backend's current state (up, unknown, starting, down, switching, "
            "mode_inactive, cloud).", labels=["backend", "state"])
        in_flight = GaugeMetricFamily("mushishi_router_backend_in_flight_requests",
                                      "Requests in flight per backend.", labels=["backend"])
        queued = GaugeMetricFamily("mushishi_router_backend_queued_requests",
                                   "Requests waiting for a backend's concurrency slot.",
                                   labels=["backend"])
        for name, backend in routing.backends.items():
            current = routing.verdict(name).state
            for option in BACKEND_STATES:
                state.add_metric([name, option], 1.0 if option == current else 0.0)
            in_flight.add_metric([name], backend.slots.in_flight)
            queued.add_metric([name], backend.slots.queued)
        yield state
        yield in_flight
        yield queued
        waiting = GaugeMetricFamily("mushishi_router_t1_queue_requests",
                                    "T1 requests waiting for a local backend, by profile.",
                                    labels=["profile"])
        for profile in view.profiles:
            waiting.add_metric([profile], routing.t1_queued(profile))
        yield waiting
        gpu = routing.gpu
        gpud = GaugeMetricFamily("mushishi_router_gpud_present",
                                 "1 when mushishi-gpud is on the bus and followed.")
        gpud.add_metric([], 1.0 if gpu.present else 0.0)
        yield gpud
        mode = GaugeMetricFamily("mushishi_router_gpu_mode_info",
                                 "1 for the GPU mode and state gpud last reported.",
                                 labels=["mode", "state"])
        if gpu.present:
            mode.add_metric([gpu.active_mode or "", gpu.state or ""], 1.0)
        yield mode
        layers = GaugeMetricFamily(
            "mushishi_router_sovereignty_layer",
            "1 for each sovereignty layer's state (ok, failed, unknown): config, connect-time, "
            "kernel.", labels=["layer", "state"])
        for layer, value in view.sovereignty.layers().items():
            current = "unknown" if value is None else ("ok" if value else "failed")
            for option in ("ok", "failed", "unknown"):
                layers.add_metric([layer, option], 1.0 if option == current else 0.0)
        yield layers
        share = GaugeMetricFamily("mushishi_router_cloud_share_ratio",
                                  "Share of answered requests served by a cloud backend, by "
                                  "profile and window (hour, day).", labels=["profile", "window"])
        for profile in view.profiles:
            value = view.cloud_share.share(profile)
            share.add_metric([profile, "hour"], value.hour)
            share.add_metric([profile, "day"], value.day)
        yield share
        draining = GaugeMetricFamily("mushishi_router_draining",
                                     "1 while the router drains before stopping.")
        draining.add_metric([], 1.0 if view.traffic.draining else 0.0)
        yield draining
