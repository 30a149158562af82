"""`[bench]` and `[traces]`: the tokens/s regression log and OTLP traces of routed requests."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from mushishi.shared.config._base import AbsolutePath, CredentialName, Issue, Section
from mushishi.shared.locality import (
    AddressError,
    Resolver,
    classify,
    parse_backend_url,
    system_resolver,
)

if TYPE_CHECKING:
    from mushishi.shared.config.settings import MushishiSettings

TARGET_KINDS = ("profile", "backend")


def parse_target(text: str) -> tuple[str, str]:
    """Split a bench target `profile:NAME` or `backend:NAME`; raise ValueError otherwise."""
    kind, colon, name = text.partition(":")
    if not colon or kind not in TARGET_KINDS or not name:
        raise ValueError(f"{text!r} is not a bench target: write profile:NAME (through the "
                         "router) or backend:NAME (a local backend directly)")
    return kind, name


class BenchSettings(Section):
    """`mushishi bench` and mushishi-bench.timer: a fixed prompt set, timed, logged to a CSV."""

    results: AbsolutePath | None = Field(
        default=None,
        description="CSV the results are appended to (time, target, prompt_tokens, "
        "completion_tokens, seconds, tokens_per_s, gpu_power_w, gpu_temperature_c, "
        "regression, backend, gpu_mode). Unset: watchdog.bench_results, the file the "
        "watchdog checks; when set, it must be that file.",
    )
    targets: list[str] = Field(
        default=[],
        description="What the timer benchmarks: `profile:NAME` (through the router's unix "
        "socket, as a client would) or `backend:NAME` (a local backend directly). Empty: "
        "every local backend that serves chat/completions and runs in the current GPU mode.",
    )
    max_tokens: int = Field(
        default=128, gt=0, le=4096,
        description="Completion tokens asked for per prompt (the prompts ask for long "
        "answers, so most runs generate exactly this many).",
    )
    repeats: int = Field(
        default=1, ge=1, le=20, description="Times the whole prompt set is sent per target."
    )
    request_timeout_s: float = Field(
        default=300.0, gt=0, description="Longest wait for one completion."
    )
    regression_ratio: float = Field(
        default=0.15, gt=0, lt=1,
        description="A run is a regression when its tokens/s is more than this fraction below "
        "the trailing average of the same target and backend.",
    )
    trailing_runs: int = Field(
        default=5, ge=1, le=100,
        description="How many earlier runs of the same target and backend make the trailing "
        "average.",
    )
    api_key_credential: CredentialName | None = Field(
        default=None,
        description="Credential holding an API key for profile targets; unset: the router "
        "maps the caller by uid (router.unix_peers, e.g. `mushishi-bench = [\"private\"]`: "
        "the bench runs as its own user).",
    )
    textfile_dir: AbsolutePath = Field(
        default="/var/lib/prometheus/node-exporter",
        description="node_exporter textfile directory for mushishi_bench.prom.",
    )
    gpu_sample_interval_s: float = Field(
        default=1.0, gt=0,
        description="How often gpud's GPU power and temperature are read during a run.",
    )

    @field_validator("targets")
    @classmethod
    def _targets_parse(cls, value: list[str]) -> list[str]:
        for target in value:
            parse_target(target)
        return value


class TracesSettings(Section):
    """OTLP/HTTP traces of routed requests (optional `traces` extra), e.g. for Arize Phoenix."""

    endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP traces URL, e.g. http://127.0.0.1:6006/v1/traces (Phoenix) or "
        "http://127.0.0.1:4318/v1/traces (an OpenTelemetry collector). Unset: no traces, no "
        "cost. Must be local (router.local_networks): the router's unit reaches nothing else.",
    )
    service_name: str = Field(
        default="mushishi-router", min_length=1,
        description="service.name of the spans.",
    )
    sample_ratio: float = Field(
        default=1.0, ge=0, le=1, description="Fraction of requests traced (by trace id)."
    )
    export_timeout_s: float = Field(
        default=5.0, gt=0, description="Timeout of one export to the collector."
    )
    max_queue_size: int = Field(
        default=2048, gt=0,
        description="Spans kept in memory while the collector is slow or down; beyond it the "
        "newest are dropped (a request is never delayed by tracing).",
    )
    schedule_delay_s: float = Field(
        default=2.0, gt=0, description="Longest wait before finished spans are exported."
    )


def bench_results(settings: MushishiSettings) -> str:
    """The bench's CSV: bench.results, else the file the watchdog checks."""
    return settings.bench.results or settings.watchdog.bench_results


def check(settings: MushishiSettings, resolve: Resolver | None = system_resolver
          ) -> list[Issue]:
    """Bench targets name real, local things; traces stay on the box; the watchdog reads the
    bench's CSV."""
    issues: list[Issue] = []
    router = settings.router
    for index, target in enumerate(settings.bench.targets):
        kind, name = parse_target(target)
        key = f"bench.targets[{index}]"
        if kind == "profile" and name not in settings.profiles:
            issues.append(Issue(key, f"unknown profile {name!r} (profiles: "
                                     f"{', '.join(sorted(settings.profiles)) or 'none'})"))
        elif kind == "backend":
            backend = settings.backends.get(name)
            if backend is None:
                issues.append(Issue(key, f"unknown backend {name!r} (backends: "
                                         f"{', '.join(sorted(settings.backends)) or 'none'})"))
                continue
            try:
                locality = classify(parse_backend_url(backend.url), router.local_networks,
                                    router.local_hosts)
            except AddressError as error:
                issues.append(Issue(key, str(error)))
                continue
            if not locality.local:
                issues.append(Issue(key, f"backend {name!r} is not local ({locality.reason}): "
                                         "bench a cloud backend through a T2/T3 profile, so "
                                         "the egress and its budgets apply"))
            elif "chat/completions" not in backend.endpoints:
                issues.append(Issue(key, f"backend {name!r} does not serve chat/completions "
                                         f"(backends.{name}.endpoints): the bench times chat "
                                         "completions"))
    if settings.bench.results is not None and \
            settings.bench.results != settings.watchdog.bench_results:
        issues.append(Issue("bench.results",
                            f"{settings.bench.results} is not watchdog.bench_results "
                            f"({settings.watchdog.bench_results}): the watchdog would never "
                            "see a regression (leave bench.results unset to use that file)"))
    endpoint = settings.traces.endpoint
    if endpoint is not None:
        try:
            address = parse_backend_url(endpoint)
        except AddressError as error:
            issues.append(Issue("traces.endpoint", str(error)))
        else:
            if address.unix_path is not None:
                issues.append(Issue("traces.endpoint", "must be an http:// or https:// URL"))
            else:
                # Resolved now, like a local backend's hostname; the exporter also checks
                # the address of every connection it opens (services/router/traces.py).
                locality = classify(address, router.local_networks, router.local_hosts,
                                    resolve)
                if not locality.local:
                    issues.append(Issue("traces.endpoint", (
                        f"{locality.reason}: traces must stay on the box or the tailnet (the "
                        "router's unit is denied every other address)")))
    return issues
