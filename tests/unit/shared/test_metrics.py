"""Metrics helpers: a registry per daemon, /metrics over aiohttp, atomic textfiles."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import Counter

from mushishi.shared.metrics import (
    LabelChildren,
    add_metrics_route,
    new_registry,
    write_textfile,
    write_textfile_or_warn,
)


async def test_metrics_route_serves_this_daemons_registry_only() -> None:
    registry = new_registry("router")
    Counter("mushishi_router_requests", "Requests.", registry=registry).inc(3)
    other = new_registry("gpud")
    Counter("mushishi_gpud_switches", "Switches.", registry=other).inc()
    app = web.Application()
    add_metrics_route(app, registry)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/metrics")
        body = await response.text()
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert "mushishi_router_requests_total 3.0" in body
    assert 'mushishi_build_info{daemon="router"' in body
    assert "gpud" not in body


def test_textfile_is_written_atomically_and_readable(tmp_path: Path) -> None:
    registry = new_registry("backup")
    target = write_textfile(registry, tmp_path / "textfiles", "mushishi_backup")
    assert target.name == "mushishi_backup.prom"
    assert target.stat().st_mode & 0o777 == 0o644
    assert "mushishi_build_info" in target.read_text()
    assert [p.name for p in target.parent.iterdir()] == ["mushishi_backup.prom"]


def test_label_children_child_is_made_once_per_metric_and_labels() -> None:
    registry = new_registry("router")
    requests = Counter("mushishi_router_requests", "Requests.", ["profile", "outcome"],
                       registry=registry)
    tokens = Counter("mushishi_router_tokens", "Tokens.", ["profile", "outcome"],
                     registry=registry)
    children = LabelChildren()
    first = children.child(requests, "private", "success")
    assert children.child(requests, "private", "success") is first
    assert children.child(tokens, "private", "success") is not first
    assert children.child(requests, "private", "timeout") is not first
    first.inc()
    children.child(requests, "private", "success").inc(2)
    assert registry.get_sample_value(
        "mushishi_router_requests_total", {"profile": "private", "outcome": "success"}) == 3


def test_textfile_that_cannot_be_written_is_a_warning_naming_the_config_key(
        tmp_path: Path) -> None:
    registry = new_registry("backup")
    assert write_textfile_or_warn(registry, str(tmp_path / "textfile"), "mushishi_backup",
                                  "backup.textfile_dir") is None
    assert (tmp_path / "textfile/mushishi_backup.prom").is_file()
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the directory should be")
    warning = write_textfile_or_warn(registry, str(blocked), "mushishi_backup",
                                     "backup.textfile_dir")
    assert warning == (f"cannot write the metrics textfile in {blocked} "
                       "(backup.textfile_dir): File exists")

