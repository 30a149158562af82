"""The Docker Engine client's stop-list calls, through the official `docker` SDK, against the
Engine API stand-in on a unix socket."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mushishi.services.tenant.docker_api import Container, DockerEngine
from tests.paths import REPO


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    sleeper = subprocess.Popen(["sleep", "60"])
    socket, log = tmp_path / "docker.sock", tmp_path / "stops.jsonl"
    containers = [{"name": "ollama", "pid": sleeper.pid}, {"name": "grafana"}]
    server = subprocess.Popen([sys.executable, str(REPO / "tests/standins/docker_engine.py"),
                               "--socket", str(socket), "--log", str(log),
                               "--containers", json.dumps(containers)])
    deadline = time.monotonic() + 15
    while not socket.exists():
        assert time.monotonic() < deadline and server.poll() is None
        time.sleep(0.05)
    yield f"unix://{socket}", log, sleeper
    server.terminate()
    server.wait(timeout=10)
    sleeper.kill()
    sleeper.wait()


def test_running_containers_are_listed_by_name(engine: tuple[str, Path, object]) -> None:
    url, _, _ = engine
    assert sorted(c.name for c in DockerEngine(url).running()) == ["grafana", "ollama"]


def test_stopping_a_container_stops_only_it(engine: tuple[str, Path, subprocess.Popen[bytes]]
                                            ) -> None:
    url, log, sleeper = engine
    docker = DockerEngine(url)
    (ollama,) = [c for c in docker.running() if c.name == "ollama"]
    docker.stop([ollama.id], seconds=5)
    assert [c.name for c in docker.running()] == ["grafana"]
    assert sleeper.wait(timeout=5) == -15  # the container's process got SIGTERM
    (line,) = log.read_text().splitlines()
    assert json.loads(line)["stopped"] == "ollama" and json.loads(line)["t"] == "5"


def test_unreachable_docker_raises() -> None:
    with pytest.raises(Exception, match=r"(?i)connection|no such file"):
        DockerEngine("unix:///nonexistent/docker.sock").running()


def test_container_value_is_plain() -> None:
    assert Container("1" * 64, "x") == Container("1" * 64, "x")
