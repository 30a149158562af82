"""mushishi-egress's Prometheus metrics (`mushishi_egress_*`), on its own registry.

Counters move per request; budgets, cooldowns and requests in flight are read from the
daemon's live state at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mushishi.shared.metrics import LabelChildren

if TYPE_CHECKING:
    from mushishi.services.egress.app import Egress

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class EgressMetrics(LabelChildren):
    """Every metric the egress updates per request."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.requests = Counter(
            "mushishi_egress_requests_total",
            "Requests handled, by profile, cloud backend and outcome (success, client_error, "
            "budget_exhausted, cooling_down, rate_limited, provider_error, timeout, unreachable, "
            "broken_stream, no_credential, cancelled).",
            ["profile", "backend", "outcome"], registry=registry)
        self.sovereignty_refusals = Counter(
            "mushishi_egress_sovereignty_refusals_total",
            "Requests refused because the egress's own reading of the config forbids them "
            "(sovereign_tier, tier_mismatch, unknown_profile, unknown_backend, not_cloud, "
            "not_in_chain, missing_headers), whatever the router sent.",
            ["reason"], registry=registry)
        self.peer_refusals = Counter(
            "mushishi_egress_peer_refusals_total",
            "Requests refused because the peer's uid (SO_PEERCRED) is not in "
            "egress.allowed_peers.", registry=registry)
        self.tokens = Counter(
            "mushishi_egress_tokens_total",
            "Tokens counted in the budget ledger, by cloud backend and kind (prompt, "
            "completion).", ["backend", "kind"], registry=registry)
        self.cost = Counter(
            "mushishi_egress_cost_total",
            "Spend counted in the budget ledger, by cloud backend (in the prices' currency).",
            ["backend"], registry=registry)
        self.estimated = Counter(
            "mushishi_egress_estimated_requests_total",
            "Requests counted from estimates because the provider's usage never arrived "
            "(a cut stream, a crash), by cloud backend.", ["backend"], registry=registry)
        self.cooldowns = Counter(
            "mushishi_egress_cooldowns_total",
            "Cooldowns started, by cloud backend and reason (failures, retry_after).",
            ["backend", "reason"], registry=registry)
        self.upstream_seconds = Histogram(
            "mushishi_egress_upstream_duration_seconds",
            "From sending a request to a provider to the end of its answer.",
            ["backend"], buckets=LATENCY_BUCKETS, registry=registry)


class EgressStateCollector(Collector):
    """Budgets, cooldowns and requests in flight, read at scrape time."""

    def __init__(self, egress_getter: Callable[[], Egress]) -> None:
        self._egress = egress_getter

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One family per quantity, one sample per cloud backend."""
        egress = self._egress()
        now = datetime.now(UTC)
        families = {
            (what, kind): GaugeMetricFamily(
                f"mushishi_egress_budget_{what}_{kind}",
                f"Today's (UTC) {kind} {what} per cloud backend"
                + (" (only where a limit is configured)." if what != "used" else "."),
                labels=["backend"])
            for what in ("used", "limit", "remaining")
            for kind in ("requests", "tokens", "cost", "audio_seconds")
        }
        cooling = GaugeMetricFamily(
            "mushishi_egress_cooldown_remaining_seconds",
            "Seconds until a cloud backend is tried again (0 when it is not cooling down).",
            labels=["backend"])
        in_flight = GaugeMetricFamily("mushishi_egress_in_flight_requests",
                                      "Requests sent to a provider and not settled yet.",
                                      labels=["backend"])
        credential = GaugeMetricFamily(
            "mushishi_egress_credential_present",
            "1 when the backend's API key credential was found.", labels=["backend"])
        for name, view in egress.budgets(now).items():
            for kind in ("requests", "tokens", "cost", "audio_seconds"):
                used = view[f"{kind}_used"]
                limit = view[f"{kind}_limit"]
                if used is not None:
                    families[("used", kind)].add_metric([name], float(used))
                if limit is not None:
                    families[("limit", kind)].add_metric([name], float(limit))
                    families[("remaining", kind)].add_metric(
                        [name], max(float(limit) - float(used or 0), 0.0))
            until = view["cooldown_until"]
            remaining = (datetime.fromisoformat(until) - now).total_seconds() if until else 0.0
            cooling.add_metric([name], max(remaining, 0.0))
            in_flight.add_metric([name], float(view["requests_in_flight"]))
            provider = egress.providers.get(name)
            credential.add_metric([name], 1.0 if provider is not None and provider.key else 0.0)
        yield from families.values()
        yield cooling
        yield in_flight
        yield credential
        draining = GaugeMetricFamily("mushishi_egress_draining",
                                     "1 while the egress drains before stopping.")
        draining.add_metric([], 1.0 if egress.draining else 0.0)
        yield draining
