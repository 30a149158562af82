"""Prometheus helpers: one registry per daemon, an aiohttp /metrics route, textfiles.

Names follow `mushishi_<daemon>_<what>_<unit>` with `_total` on counters. Never use the
implicit global REGISTRY: each daemon (and each test) builds its own.
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    disable_created_metrics,
    generate_latest,
)

from mushishi.shared.files import replace_atomically

if TYPE_CHECKING:
    from aiohttp import web


def package_version() -> str:
    """The installed mushishi version."""
    try:
        return version("mushishi")
    except PackageNotFoundError:  # running from a source tree without install
        return "0+unknown"


def new_registry(daemon: str) -> CollectorRegistry:
    """A fresh registry carrying `mushishi_build_info{daemon, version}`."""
    # No `<counter>_created` gauges: they double every counter's and histogram's series,
    # carry a time without the `_timestamp_seconds` suffix, and Prometheus 2 ignores them.
    # (prometheus_client only offers this process-wide switch; every daemon wants it.)
    disable_created_metrics()
    registry = CollectorRegistry(auto_describe=True)
    info = Gauge(
        "mushishi_build_info", "mushishi build information (always 1).",
        ["daemon", "version"], registry=registry,
    )
    info.labels(daemon=daemon, version=package_version()).set(1)
    return registry


class LabelChildren:
    """Per-request metrics: label children cached in a dict (a lookup instead of
    prometheus_client's lock and lookup on every request)."""

    def __init__(self) -> None:
        self._children: dict[tuple[Any, ...], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """The label child of `metric` for `labels`, made once."""
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found


def render(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text format."""
    return generate_latest(registry)


def add_metrics_route(app: web.Application, registry: CollectorRegistry) -> None:
    """Serve `registry` on GET /metrics of `app`."""
    from aiohttp import web  # here: one-shot programs (backup, watchdog) never serve

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=render(registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/metrics", metrics)


async def start_metrics_server(registry: CollectorRegistry, host: str, port: int
                               ) -> web.AppRunner:
    """A standalone /metrics endpoint for daemons without an HTTP API of their own."""
    from aiohttp import web

    app = web.Application()
    add_metrics_route(app, registry)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def write_textfile(registry: CollectorRegistry, directory: str | os.PathLike[str],
                   name: str) -> Path:
    """Atomically write `<directory>/<name>.prom` for node_exporter's textfile collector."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{name}.prom"
    replace_atomically(target, render(registry).decode(), 0o644)
    return target


def write_textfile_or_warn(registry: CollectorRegistry, directory: str, name: str,
                           key: str) -> str | None:
    """`write_textfile`, where a failure is a warning, never a failed run: None, or the
    warning naming `directory` and its config `key` (the caller logs and records it)."""
    try:
        write_textfile(registry, directory, name)
    except OSError as error:
        return (f"cannot write the metrics textfile in {directory} ({key}): "
                f"{error.strerror or error}")
    return None

