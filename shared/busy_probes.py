"""Busy probes: is a tenant working on something right now?

vLLM's /metrics (`vllm:num_requests_running` + `vllm:num_requests_waiting`), ComfyUI's
/queue (`queue_running` + `queue_pending`), a number in any JSON document, and GPU
utilisation over a short sample as the backstop for tenants without a probe. A server
that has its model loaded but serves nothing is idle: only work in flight counts.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from mushishi.shared.config.gpu import BusyProbeSettings

VLLM_RUNNING = "vllm:num_requests_running"
VLLM_WAITING = "vllm:num_requests_waiting"


class ProbeFormatError(ValueError):
    """The probe answered, but not in the format its kind expects."""


@dataclass(frozen=True, slots=True)
class BusyReading:
    """What one tenant's probe said: a count of work in flight, or why it could not tell."""

    tenant: str
    in_flight: int | None
    detail: str

    @property
    def busy(self) -> bool:
        """Work in flight, or no way to know (an unreadable probe is never taken as idle)."""
        return self.in_flight is None or self.in_flight > 0

    def line(self) -> str:
        """One human line, as Busy() returns it."""
        return f"{self.tenant}: {self.detail}"


def parse_vllm_metrics(text: str) -> tuple[int, int]:
    """(running, waiting) summed over every engine and model vLLM reports."""
    running = waiting = 0
    seen = False
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == VLLM_RUNNING:
                    running += int(sample.value)
                    seen = True
                elif sample.name == VLLM_WAITING:
                    waiting += int(sample.value)
                    seen = True
    except ValueError as error:
        raise ProbeFormatError(f"not Prometheus text: {error}") from None
    if not seen:
        raise ProbeFormatError(f"no {VLLM_RUNNING} or {VLLM_WAITING} in the metrics "
                               "(is this vLLM's /metrics?)")
    return running, waiting


def comfyui_queue(document: Any) -> tuple[list[Any], list[Any]]:
    """(running, pending) items of ComfyUI's GET /queue, each [number, prompt_id, prompt,
    extra_data, outputs_to_execute]; ProbeFormatError when they are not lists."""
    running = document.get("queue_running") if isinstance(document, dict) else None
    pending = document.get("queue_pending") if isinstance(document, dict) else None
    if not isinstance(running, list) or not isinstance(pending, list):
        raise ProbeFormatError("no queue_running/queue_pending lists; is this ComfyUI's "
                               "/queue?")
    return running, pending


def parse_comfyui_queue(document: Any) -> tuple[int, int]:
    """(running, pending) from ComfyUI's GET /queue."""
    running, pending = comfyui_queue(document)
    return len(running), len(pending)


def value_at(document: Any, path: str) -> int:
    """The in-flight count at a dotted path (`stats.in_flight`, `queues.0`); a list counts
    its items."""
    value = document
    for part in path.split("."):
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise ProbeFormatError(f"json_path {path!r}: no {part!r} in the document")
    if isinstance(value, bool) or not isinstance(value, int | float | list):
        raise ProbeFormatError(f"json_path {path!r} is {value!r}, not a number or a list")
    return len(value) if isinstance(value, list) else int(value)


async def _get(session: aiohttp.ClientSession, url: str, seconds: float) -> str:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=seconds),
                           allow_redirects=False) as response:
        body = await response.text()
        if response.status != 200:
            raise ProbeFormatError(f"HTTP {response.status}")
        return body


def _json(body: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise ProbeFormatError("not JSON") from None


async def read_probe(session: aiohttp.ClientSession, tenant: str, probe: BusyProbeSettings,
                     seconds: float) -> BusyReading | None:
    """Read one tenant's busy probe; None for kind `none` (the utilisation backstop decides)."""
    if probe.kind == "none" or probe.url is None:
        return None
    try:
        body = await _get(session, probe.url, seconds)
        if probe.kind == "vllm":
            running, waiting = parse_vllm_metrics(body)
            return BusyReading(tenant, running + waiting,
                               f"{running} request(s) running, {waiting} waiting (vLLM)")
        if probe.kind == "comfyui":
            running, pending = parse_comfyui_queue(_json(body))
            return BusyReading(tenant, running + pending,
                               f"{running} prompt(s) running, {pending} pending (ComfyUI)")
        count = value_at(_json(body), probe.json_path or "")
        return BusyReading(tenant, count, f"{count} in flight ({probe.json_path})")
    except ProbeFormatError as error:
        return BusyReading(tenant, None, f"busy probe {probe.url} unusable: {error}")
    except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError) as error:
        reason = str(error) or type(error).__name__
        return BusyReading(tenant, None, f"busy probe {probe.url} unreadable: {reason}")


async def mean_utilisation(read_percent: Callable[[], Awaitable[int]], duration: float,
                           sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                           step: float = 0.2) -> float:
    """Mean GPU utilisation over `duration` seconds, one read every `step`."""
    samples = [await read_percent()]
    for _ in range(max(0, round(duration / step))):
        await sleep(step)
        samples.append(await read_percent())
    return sum(samples) / len(samples)


def busy_lines(readings: Iterable[BusyReading], unprobed: Sequence[str],
               utilisation: float | None, threshold: int) -> list[str]:
    """One human line per finding: busy tenants, then the utilisation backstop."""
    lines = [reading.line() for reading in readings if reading.busy]
    if unprobed and utilisation is not None and utilisation >= threshold:
        lines.append(f"GPU utilisation {utilisation:.0f}% (≥ {threshold}%) while "
                     f"{', '.join(unprobed)} run(s) without a busy probe")
    return lines
