"""Wiring of a bench run: choose targets, time them with GPU readings, append the rows, write
the textfile. Used by `mushishi bench` (and so by mushishi-bench.service)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from mushishi.services.bench import results
from mushishi.services.bench.core import Result, Skip, Target, choose_targets, make_result
from mushishi.services.bench.runner import (
    BenchError,
    Endpoint,
    GpuWatch,
    backend_endpoint,
    router_endpoint,
    run_target,
)
from mushishi.shared.config import MushishiSettings
from mushishi.shared.locality import backend_locality
from mushishi.shared.tasks import cancel_and_wait

log = logging.getLogger("mushishi.bench")


@dataclass
class Outcome:
    """What a run did: results, skips and failures (each failure names its target)."""

    results: list[Result] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    failed: list[tuple[Target, str]] = field(default_factory=list)
    textfile_error: str | None = None


def local_backends(settings: MushishiSettings) -> dict[str, tuple[str, ...] | None]:
    """Local backends that serve chat completions (what the bench times), by address as the
    router decides, and the GPU modes they run in."""
    router = settings.router
    found: dict[str, tuple[str, ...] | None] = {}
    for name, backend in settings.backends.items():
        if "chat/completions" not in backend.endpoints:
            continue  # speech, images, embeddings, rerank: nothing to time with a chat
        if backend_locality(backend.url, router.local_networks, router.local_hosts).local:
            found[name] = tuple(backend.modes) if backend.modes is not None else None
    return found


def endpoint_for(settings: MushishiSettings, target: Target, api_key: str | None) -> Endpoint:
    """Where a target's requests go; cloud backends are refused (they go through profiles)."""
    if target.kind == "profile":
        if target.name not in settings.profiles:
            raise BenchError(f"unknown profile {target.name!r} (profiles: "
                             f"{', '.join(sorted(settings.profiles)) or 'none'})")
        return router_endpoint(settings.router.listen, target.name, api_key)
    backend = settings.backends.get(target.name)
    if backend is None:
        raise BenchError(f"unknown backend {target.name!r} (backends: "
                         f"{', '.join(sorted(settings.backends)) or 'none'})")
    if target.name not in local_backends(settings):
        raise BenchError(f"backend {target.name!r} is not local: bench a cloud backend "
                         "through a T2/T3 profile, so the egress and its budgets apply")
    return backend_endpoint(backend.url, backend.model)


async def run_bench(settings: MushishiSettings, requested: Sequence[Target], *,
                    results_path: Path, textfile_dir: str | None, api_key: str | None,
                    max_tokens: int, repeats: int,
                    progress: Callable[[str], None] = lambda _: None,
                    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                    bus_address: str | None = None) -> Outcome:
    """Run every chosen target in turn; append one row per measured target."""
    bench = settings.bench
    outcome = Outcome()
    gpu = await GpuWatch.connect(bus_address)
    try:
        mode = await gpu.active_mode()
        targets, outcome.skipped = choose_targets(requested, local_backends(settings), mode)
        for skip in outcome.skipped:
            log.info("skipped %s: %s", skip.target.label, skip.reason)
        for target in targets:
            try:
                endpoint = endpoint_for(settings, target, api_key)
            except BenchError as error:
                outcome.failed.append((target, str(error)))
                continue
            gpu.take()
            sampler = asyncio.create_task(gpu.sample(bench.gpu_sample_interval_s))
            try:
                completions = await run_target(
                    endpoint, target, max_tokens=max_tokens, repeats=repeats,
                    timeout_s=bench.request_timeout_s, progress=progress)
            except BenchError as error:
                outcome.failed.append((target, str(error)))
                continue
            finally:
                await cancel_and_wait(sampler)
            power, temperature = gpu.take()
            with results.locked(results_path) as handle:
                history = results.read_rows(handle)
                result = make_result(target, completions, time=clock(), history=history,
                                     ratio=bench.regression_ratio, runs=bench.trailing_runs,
                                     gpu_power_w=power, gpu_temperature_c=temperature,
                                     gpu_mode=mode)
                results.append(handle, [result.row])
            outcome.results.append(result)
    finally:
        gpu.close()
    if textfile_dir is not None and outcome.results:
        try:
            results.write_metrics(results.read_history(results_path), textfile_dir, clock())
        except OSError as error:
            outcome.textfile_error = (f"cannot write {textfile_dir}/{results.TEXTFILE}.prom: "
                                      f"{error.strerror or error} (bench.textfile_dir)")
    return outcome
