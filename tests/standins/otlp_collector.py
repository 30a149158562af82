"""A stand-in OTLP/HTTP trace collector (what Arize Phoenix or an OpenTelemetry collector
accepts on POST /v1/traces): it decodes every ExportTraceServiceRequest (protobuf, gzip or
not) with the official OTLP protobuf definitions, keeps the spans as plain data and the raw
bodies (so a test can prove what was NOT sent), and answers like a collector does.

    collector = await OtlpCollector().start()      # port 0
    ... collector.endpoint ... collector.spans ...
    python -m tests.standins.otlp_collector --port 4318 [--record spans.jsonl]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status


def value_of(value: AnyValue) -> Any:
    """An OTLP AnyValue as a plain Python value."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [value_of(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return attributes_of(value.kvlist_value.values)
    if kind is None:
        return None
    return getattr(value, kind)


def attributes_of(pairs: Any) -> dict[str, Any]:
    """OTLP key-values as a dict."""
    return {pair.key: value_of(pair.value) for pair in pairs}


@dataclass
class OtlpCollector:
    """The collector; `spans` grows as exports arrive."""

    host: str = "127.0.0.1"
    port: int = 0
    record: Path | None = None
    fail_status: int | None = None  # answer this status instead of accepting (a sick collector)
    spans: list[dict[str, Any]] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    exports: int = 0
    _runner: web.AppRunner | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def endpoint(self) -> str:
        """The URL to give `traces.endpoint`."""
        return f"http://{self.host}:{self.port}/v1/traces"

    async def start(self) -> OtlpCollector:
        """Listen; port 0 picks a free port."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_spans(self, count: int, within: float = 15.0) -> list[dict[str, Any]]:
        """Wait (for real exports) until at least `count` spans arrived."""
        deadline = asyncio.get_running_loop().time() + within
        while len(self.spans) < count:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"{len(self.spans)} span(s) arrived, {count} expected")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                continue
        return self.spans

    async def _traces(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if request.headers.get("Content-Encoding", "").lower() == "gzip":
            raw = gzip.decompress(raw)
        self.bodies.append(raw)
        if self.fail_status is not None:
            return web.Response(status=self.fail_status)
        if request.content_type != "application/x-protobuf":
            return web.Response(status=415, text="only application/x-protobuf")
        message = ExportTraceServiceRequest()
        message.ParseFromString(raw)
        self.exports += 1
        for resource_spans in message.resource_spans:
            resource = attributes_of(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    decoded = self._decode(span, resource, scope_spans.scope.name)
                    self.spans.append(decoded)
                    if self.record is not None:
                        with self.record.open("a") as handle:
                            handle.write(json.dumps(decoded) + "\n")
        self._arrived.set()
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    @staticmethod
    def _decode(span: Span, resource: dict[str, Any], scope: str) -> dict[str, Any]:
        return {
            "name": span.name,
            "kind": Span.SpanKind.Name(span.kind),
            "trace_id": span.trace_id.hex(),
            "span_id": span.span_id.hex(),
            "start_ns": span.start_time_unix_nano,
            "end_ns": span.end_time_unix_nano,
            "attributes": attributes_of(span.attributes),
            "events": [{"name": event.name, "attributes": attributes_of(event.attributes)}
                       for event in span.events],
            "status": Status.StatusCode.Name(span.status.code),
            "status_message": span.status.message,
            "resource": resource,
            "scope": scope,
        }



def main() -> None:
    """Run the collector until interrupted (prints `listening <endpoint>` when ready)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318)
    parser.add_argument("--record", type=Path)
    args = parser.parse_args()

    async def serve() -> None:
        collector = await OtlpCollector(args.host, args.port, args.record).start()
        print(f"listening {collector.endpoint}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
