"""The router's per-request metrics, kept as plain numbers, scrape exactly as prometheus_client's
own counters and histograms would."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, generate_latest

from mushishi.services.router.metrics import LATENCY_BUCKETS, LoopCounter, LoopHistogram
from mushishi.shared.metrics import new_registry


def test_loop_families_scrape_like_prometheus_clients_own() -> None:
    ours, theirs = new_registry("router"), new_registry("router")
    counter = LoopCounter("mushishi_router_requests_total", "Requests.", ["profile", "outcome"])
    histogram = LoopHistogram("mushishi_router_request_duration_seconds", "Duration.",
                              ["profile"], LATENCY_BUCKETS)
    plain = LoopHistogram("mushishi_router_overhead_seconds", "Overhead.", [], (0.001, 0.01))

    class Families:
        def collect(self):  # type: ignore[no-untyped-def]
            yield counter.collect()
            yield histogram.collect()
            yield plain.collect()

    ours.register(Families())  # type: ignore[arg-type]
    their_counter = Counter("mushishi_router_requests_total", "Requests.",
                            ["profile", "outcome"], registry=theirs)
    their_histogram = Histogram("mushishi_router_request_duration_seconds", "Duration.",
                                ["profile"], buckets=LATENCY_BUCKETS, registry=theirs)
    their_plain = Histogram("mushishi_router_overhead_seconds", "Overhead.",
                            buckets=(0.001, 0.01), registry=theirs)
    for profile, outcome, seconds in [("private", "success", 0.004), ("private", "success", 0.01),
                                      ("personal", "client_error", 400.0),
                                      ("private", "mode_mismatch", 0.005)]:
        counter.labels(profile, outcome).inc()
        their_counter.labels(profile, outcome).inc()
        histogram.labels(profile).observe(seconds)
        their_histogram.labels(profile).observe(seconds)
        plain.observe(seconds / 100)
        their_plain.observe(seconds / 100)
    assert generate_latest(ours) == generate_latest(theirs)
