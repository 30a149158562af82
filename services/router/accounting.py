"""What the router counts about each request: metrics, the journal record, the trace, and the
cloud share. Never any prompt or completion text.

`finish` runs once per routed request and `reject` once per request refused before it
reached a profile; both are on the hot path, so what can be prepared is prepared once: the
label children of each (profile, backend), and the journal record's constant part.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from mushishi.services.router.call import Call
from mushishi.services.router.cloud_share import CloudShare
from mushishi.services.router.core import Hop
from mushishi.services.router.errors import Rejection
from mushishi.services.router.metrics import RouterMetrics
from mushishi.services.router.traces import RequestTracer

log = logging.getLogger("mushishi.router.request")

_ANSWERED = frozenset({"success", "client_error"})


class _Route:
    """The label children of one (profile, backend, endpoint), bound once."""

    __slots__ = ("cloud", "completion_tokens", "duration", "first_byte", "outcomes",
                 "prompt_tokens")

    def __init__(self, metrics: RouterMetrics, profile: str, backend: str, endpoint: str,
                 cloud: bool) -> None:
        self.outcomes: dict[str, Any] = {}
        self.cloud = cloud
        self.duration = metrics.duration.labels(profile, backend, endpoint)
        self.first_byte = metrics.first_byte.labels(profile, backend, endpoint)
        self.prompt_tokens = metrics.tokens.labels(profile, backend, "prompt")
        self.completion_tokens = metrics.tokens.labels(profile, backend, "completion")


class _Records:
    """Journal records of one call site, made from a template (logging's makeRecord, which
    inspects the process, thread and source file for every record, runs once)."""

    def __init__(self, logger: logging.Logger, function: Callable[..., Any]) -> None:
        code = function.__code__
        self._logger = logger
        self._template = logger.makeRecord(logger.name, logging.INFO, code.co_filename,
                                           code.co_firstlineno, "", None, None,
                                           code.co_name).__dict__
        # What relativeCreated is measured from (logging's start time).
        self._start = self._template["created"] - self._template["relativeCreated"] / 1000
        self._task_names = "taskName" in self._template

    def emit(self, level: int, text: str, fields: dict[str, str]) -> None:
        """Send one record with `fields` through the logger's handlers."""
        logger = self._logger
        if not logger.isEnabledFor(level):
            return
        record = logging.LogRecord.__new__(logging.LogRecord)
        attributes = record.__dict__
        attributes.update(self._template)
        attributes.update(fields)
        now = time.time()
        attributes["msg"] = text
        attributes["levelno"] = level
        attributes["levelname"] = logging.getLevelName(level)
        attributes["created"] = now
        attributes["msecs"] = int((now - int(now)) * 1000) + 0.0
        attributes["relativeCreated"] = (now - self._start) * 1000
        if self._task_names:
            attributes["taskName"] = _task_name()
        logger.handle(record)


def _task_name() -> str | None:
    try:
        task = asyncio.current_task()
    except RuntimeError:
        return None
    return task.get_name() if task is not None else None


class Accounting:
    """Counts finished and refused requests; one per router."""

    def __init__(self, metrics: RouterMetrics, cloud_share: CloudShare,
                 tracer: RequestTracer | None, backends: Mapping[str, Hop],
                 gpu_mode: Callable[[], str | None]) -> None:
        self.metrics = metrics
        self.cloud_share = cloud_share
        self._tracer = tracer
        self._cloud = {name: not hop.local for name, hop in backends.items()}
        self._gpu_mode = gpu_mode
        self._routes: dict[tuple[str, str, str], _Route] = {}
        self._unrouted: dict[tuple[str, str], Any] = {}
        self._records = _Records(log, Accounting.finish)

    def _route(self, profile: str, backend: str, path: str) -> _Route:
        route = self._routes.get((profile, backend, path))
        if route is None:
            route = self._routes[(profile, backend, path)] = _Route(
                self.metrics, profile, backend, path.lstrip("/"),
                self._cloud.get(backend, False))
        return route

    def finish(self, call: Call, message: str | None = None) -> None:
        """Metrics, the trace and the journal record of a finished call."""
        metrics = self.metrics
        outcome = call.outcome or "unknown"
        profile = call.profile.name
        backend = call.backend
        route = self._route(profile, backend, call.path)
        counter = route.outcomes.get(outcome)
        if counter is None:
            counter = route.outcomes[outcome] = metrics.requests.labels(
                profile, backend, call.path.lstrip("/"), outcome)
        counter.inc()
        elapsed = time.perf_counter() - call.started
        if backend != "none":
            route.duration.observe(elapsed)
            if call.first_byte is not None:
                route.first_byte.observe(call.first_byte - call.started)
            metrics.overhead.observe(max(call.overhead_s, 0.0))
            if call.prompt_tokens:
                route.prompt_tokens.inc(call.prompt_tokens)
            if call.completion_tokens:
                route.completion_tokens.inc(call.completion_tokens)
            if outcome == "success":
                self.cloud_share.record(profile, route.cloud)
        gpu_mode = self._gpu_mode()
        if self._tracer is not None:
            self._tracer.record(call, elapsed_s=elapsed, gpu_mode=gpu_mode)
        level = logging.INFO if outcome in _ANSWERED else logging.WARNING
        duration_ms = f"{elapsed * 1000:.1f}"
        text = (f"{call.path.lstrip('/')} {profile} -> {backend}: {call.status} {outcome} "
                f"in {duration_ms} ms")
        if call.fallbacks:
            text += f" after {call.fallbacks} fallback(s)"
        if call.retries:
            text += f", {call.retries} retry(ies) of a hop that failed before its first byte"
        if message:
            text += f" ({message})"
        self._records.emit(level, text, {
            "MUSHISHI_BACKEND": backend,
            "MUSHISHI_MODE": gpu_mode or "unknown",
            "MUSHISHI_OUTCOME": outcome,
            "MUSHISHI_STATUS": str(call.status),
            "MUSHISHI_API": call.api,
            "MUSHISHI_STREAM": "1" if call.stream else "0",
            "MUSHISHI_DURATION_MS": duration_ms,
            "MUSHISHI_OVERHEAD_MS": f"{call.overhead_s * 1000:.3f}",
            "MUSHISHI_FALLBACKS": str(call.fallbacks),
            "MUSHISHI_RETRIES": str(call.retries),
        })

    def reject(self, method: str, path: str, rejection: Rejection,
               request_id: str | None) -> None:
        """Count and log a request refused before it reached a profile."""
        code = rejection.code.value
        counter = self._unrouted.get(("none", code))
        if counter is None:
            counter = self._unrouted[("none", code)] = self.metrics.requests.labels(
                "none", "none", "none", code)
        counter.inc()
        log.info("%s %s refused: %s (%s)", method, path, code, rejection.message,
                 extra={"MUSHISHI_OUTCOME": code, "MUSHISHI_REQUEST_ID": request_id or ""})

    def fell_back(self, profile: str, backend: str, reason: str) -> None:
        """A hop of `profile` was abandoned for the next one."""
        self.metrics.child(self.metrics.fallbacks, profile, backend, reason).inc()

    def sovereignty_refused(self, layer: str) -> None:
        """A sovereignty layer refused a connection or a hop."""
        self.metrics.child(self.metrics.sovereignty_refusals, layer).inc()
