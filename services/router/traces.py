"""OTLP/HTTP traces of routed requests (`[traces]`, optional `traces` extra).

One span per request that reached a profile, built when the request finishes from what the
router already records: profile, tier, the backend that answered, each failed or skipped
hop (an event), time to first byte, router overhead, token counts, the GPU mode, the
outcome. Never a prompt, a completion, a header or a key: the span is built from the `Call`
fields that carry no text from the request, and a backend's own error message is not
copied either (only its status and the failure kind).

Export runs in the OpenTelemetry SDK's batch thread (a bounded queue: a slow or dead
collector never delays a request), over HTTP with a session that ignores proxy variables,
to an endpoint the config check keeps local. Without `traces.endpoint` nothing here is
imported and the per-request cost is one attribute test.

The attributes follow OpenInference (Arize Phoenix) where it has a name
(`openinference.span.kind`, `llm.model_name`, `llm.token_count.*`) and OpenTelemetry's
HTTP conventions for the status; the rest are `mushishi.*`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from mushishi.services.router.call import Call
from mushishi.services.router.upstream import SovereigntyRefusal
from mushishi.shared.config.observability import TracesSettings
from mushishi.shared.locality import IPNetwork, address_is_local

log = logging.getLogger("mushishi.router.traces")

_ANSWERED = ("success", "client_error")


class RequestTracer:
    """Turns finished calls into spans and hands them to the batch exporter."""

    def __init__(self, provider: Any, tracer: Any, span_kind: Any, status: Any,
                 status_code: Any) -> None:
        self._provider = provider
        self._tracer = tracer
        self._kind = span_kind
        self._status = status
        self._error = status_code.ERROR

    @classmethod
    def from_settings(cls, traces: TracesSettings, version: str,
                      networks: Sequence[IPNetwork]) -> RequestTracer | None:
        """A tracer when `traces.endpoint` is set and the `traces` extra is installed; its
        exporter connects only to addresses inside `networks` (router.local_networks)."""
        if traces.endpoint is None:
            return None
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
            from opentelemetry.trace import SpanKind, Status, StatusCode
        except ImportError as error:
            log.warning("traces.endpoint is set but OpenTelemetry is not installed (%s): no "
                        "traces are sent; install it with `pip install 'mushishi[traces]'`",
                        error)
            return None
        session = guarded_session(networks)
        exporter = OTLPSpanExporter(endpoint=traces.endpoint, timeout=traces.export_timeout_s,
                                    session=session)
        provider = TracerProvider(
            sampler=TraceIdRatioBased(traces.sample_ratio),
            resource=Resource.create({"service.name": traces.service_name,
                                      "service.version": version}),
            shutdown_on_exit=False)
        provider.add_span_processor(BatchSpanProcessor(
            exporter, max_queue_size=traces.max_queue_size,
            schedule_delay_millis=traces.schedule_delay_s * 1000,
            export_timeout_millis=traces.export_timeout_s * 1000))
        log.info("sending traces of routed requests to %s (sample ratio %g)", traces.endpoint,
                 traces.sample_ratio)
        return cls(provider, provider.get_tracer("mushishi.router", version), SpanKind.SERVER,
                   Status, StatusCode)

    def record(self, call: Call, *, elapsed_s: float, gpu_mode: str | None) -> None:
        """One span for a finished call (nothing from the request's text)."""
        end = time.time_ns()
        start = end - int(elapsed_s * 1e9)
        profile = call.profile
        outcome = call.outcome or "unknown"
        attributes: dict[str, Any] = {
            "openinference.span.kind": "LLM",
            "mushishi.profile": profile.name,
            "mushishi.tier": profile.tier,
            "mushishi.backend": call.backend,
            "mushishi.outcome": outcome,
            "mushishi.api": call.api,
            "mushishi.endpoint": call.path,
            "mushishi.stream": call.stream,
            "mushishi.fallbacks": call.fallbacks,
            "mushishi.chain": [hop.name for hop in call.hops],
            "mushishi.request_id": call.request_id,
            "mushishi.gpu_mode": gpu_mode or "unknown",
            "mushishi.duration_ms": round(elapsed_s * 1000, 3),
            "http.response.status_code": call.status,
        }
        if call.backend != "none":
            attributes["mushishi.overhead_ms"] = round(call.overhead_s * 1000, 3)
            for hop in call.hops:
                if hop.name == call.backend:
                    attributes["llm.model_name"] = hop.model
                    attributes["mushishi.backend_local"] = hop.local
                    break
        if call.first_byte is not None:
            attributes["mushishi.time_to_first_byte_ms"] = round(
                (call.first_byte - call.started) * 1000, 3)
        if call.prompt_tokens is not None:
            attributes["llm.token_count.prompt"] = call.prompt_tokens
        if call.completion_tokens is not None:
            attributes["llm.token_count.completion"] = call.completion_tokens
        span = self._tracer.start_span(f"{profile.name} {call.api}", kind=self._kind,
                                       start_time=start, attributes=attributes)
        for failure in call.failures:
            event = {"mushishi.backend": failure.backend, "mushishi.failure": failure.kind.value,
                     "mushishi.cloud": failure.cloud}
            if failure.status is not None:
                event["http.response.status_code"] = failure.status
            span.add_event("hop_failed" if failure.kind.value != "unavailable"
                           else "hop_skipped", event, timestamp=start)
        if outcome not in _ANSWERED:
            span.set_status(self._status(self._error, outcome))
        span.end(end_time=end)

    def shutdown(self) -> None:
        """Flush what is queued (bounded by the export timeout) and stop the exporter."""
        self._provider.shutdown()


def guarded_session(networks: Sequence[IPNetwork]) -> Any:
    """A requests session for the OTLP exporter with the router's connect-time check.

    The config check keeps traces.endpoint local, but a listed hostname may resolve
    elsewhere later: every connection's peer address is checked right after connect() and
    before a byte is sent (spans of T1 requests carry their metadata). Proxy variables and
    .netrc are ignored, as on every other hop.
    """
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    allowed = list(networks)

    def checked(sock: Any) -> Any:
        peer = str(sock.getpeername()[0])
        if not address_is_local(peer, allowed):
            sock.close()
            log.error("refused to send traces to %s: outside router.local_networks "
                      "(traces.endpoint must stay local)", peer)
            raise SovereigntyRefusal(peer)
        return sock

    class Connection(HTTPConnection):
        def _new_conn(self) -> Any:
            return checked(super()._new_conn())

    class TlsConnection(HTTPSConnection):
        def _new_conn(self) -> Any:
            return checked(super()._new_conn())

    class Pool(HTTPConnectionPool):
        ConnectionCls = Connection

    class TlsPool(HTTPSConnectionPool):
        ConnectionCls = TlsConnection

    class Adapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": Pool, "https": TlsPool}

    session = requests.Session()
    session.trust_env = False  # never a proxy from the environment, never .netrc
    session.mount("http://", Adapter())
    session.mount("https://", Adapter())
    return session
