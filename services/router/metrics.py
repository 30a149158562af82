"""The router's Prometheus metrics (`mushishi_router_*`), on its own registry.

What is counted per request (requests, fallbacks, refusals, latencies, tokens) is kept as
plain numbers in label children made once (`LoopCounter`, `LoopHistogram`): only the event
loop's thread updates them, so they need none of prometheus_client's locks, and a collector
turns them into the usual counter and histogram families when scraped. States (backends,
GPU mode, sovereignty layers, cloud share, queues) are read at scrape time too, so nothing
is recomputed per request.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from mushishi.services.router.status_view import StatusView
from mushishi.shared.metrics import LabelChildren

BACKEND_STATES = ("up", "unknown", "starting", "down", "switching", "mode_inactive", "cloud")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)


class Count:
    """One labelled counter's value."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        """Add `amount` (never negative)."""
        self.value += amount


class Observations:
    """One labelled histogram's buckets (not cumulative) and sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        """Count one observation in the first bucket whose bound is >= `amount`."""
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount


class LoopCounter:
    """A labelled counter updated from the event loop's thread only."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name.removesuffix("_total")
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self._children: dict[tuple[str, ...], Count] = {}

    def labels(self, *values: str) -> Count:
        """The child of these label values (made on first use)."""
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = Count()
        return child

    def collect(self) -> CounterMetricFamily:
        """The family as scraped."""
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self._children.items():
            family.add_metric(values, child.value)
        return family


class LoopHistogram:
    """A labelled histogram updated from the event loop's thread only."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 buckets: Iterable[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self._bounds = (*buckets, float("inf"))
        self._labels = [floatToGoString(bound) for bound in self._bounds]
        self._children: dict[tuple[str, ...], Observations] = {}
        if not self.labelnames:
            self.labels()  # scraped from the start, as prometheus_client does

    def labels(self, *values: str) -> Observations:
        """The child of these label values (made on first use)."""
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = Observations(self._bounds)
        return child

    def observe(self, amount: float) -> None:
        """Observe on the histogram without labels."""
        self.labels().observe(amount)

    def collect(self) -> HistogramMetricFamily:
        """The family as scraped (cumulative buckets)."""
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self._children.items():
            total = 0
            buckets = []
            for label, count in zip(self._labels, child.counts, strict=True):
                total += count
                buckets.append((label, float(total)))
            family.add_metric(values, buckets, child.sum)
        return family


class RouterMetrics(LabelChildren, Collector):
    """Every metric the router updates per request; registers itself as their collector."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.requests = LoopCounter(
            "mushishi_router_requests_total",
            "Requests answered, by profile, backend that answered (none), endpoint "
            "(chat/completions, audio/transcriptions …; none when refused before routing) and "
            "outcome (success, client_error or a stable error code).",
            ["profile", "backend", "endpoint", "outcome"])
        self.fallbacks = LoopCounter(
            "mushishi_router_fallbacks_total",
            "Hops abandoned for the next one, by profile, backend and reason.",
            ["profile", "backend", "reason"])
        self.sovereignty_refusals = LoopCounter(
            "mushishi_router_sovereignty_refusals_total",
            "Connections or hops refused because they would leave the local networks, by layer "
            "(connect-time, kernel, router), or T1 hops refused because their tenant is not "
            "confined (tenants).",
            ["layer"])
        self.first_byte = LoopHistogram(
            "mushishi_router_time_to_first_byte_seconds",
            "From the request's arrival to the first byte of the answering backend.",
            ["profile", "backend", "endpoint"], LATENCY_BUCKETS)
        self.duration = LoopHistogram(
            "mushishi_router_request_duration_seconds",
            "From the request's arrival to the end of its answer.",
            ["profile", "backend", "endpoint"], LATENCY_BUCKETS)
        self.overhead = LoopHistogram(
            "mushishi_router_overhead_seconds",
            "Time the router itself added to a request (auth, parsing, routing, relaying), "
            "excluding queues and failed hops.",
            [], OVERHEAD_BUCKETS)
        self.tokens = LoopCounter(
            "mushishi_router_tokens_total",
            "Tokens reported by backends' usage, by profile, backend and kind "
            "(prompt, completion).",
            ["profile", "backend", "kind"])
        self._families: tuple[LoopCounter | LoopHistogram, ...] = (
            self.requests, self.fallbacks, self.sovereignty_refusals, self.first_byte,
            self.duration, self.overhead, self.tokens)
        registry.register(self)

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        """Every per-request family, as scraped."""
        for family in self._families:
            yield family.collect()


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
            "1 for each sovereignty layer's state (ok, failed, unknown): config, connect_time, "
            "kernel, tenants.", labels=["layer", "state"])
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
