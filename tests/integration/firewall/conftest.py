"""Fixtures: the namespace topology with listeners, and configs built from the seed table."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from mushishi.firewall.apply import guard_alive
from mushishi.shared.config import load_settings
from tests.integration.firewall.netns import Topology
from tests.paths import BINDIR, EXAMPLE_CONFIG

MUSHISHI = f"{BINDIR}/mushishi"

# Beyond the seed box's table: one service of every other kind the renderer handles.
EXTRA_SERVICES: list[dict[str, Any]] = [
    {"name": "postgres", "port": 5432, "exposure": "local",
     "description": "a database for local use only"},
    {"name": "audio-rtp", "port": 5004, "proto": "udp", "exposure": "tailnet"},
    {"name": "lan-web", "port": 8080, "exposure": "lan",
     "description": "published by a container, for the whole LAN"},
    {"name": "metrics-push", "port": 9091, "exposure": "tailnet", "from_containers": True},
    {"name": "local-container", "port": 5433, "exposure": "local",
     "description": "published by a container, for the box itself"},
]
# Docker stand-in: host port -> container port (8188 is the seed table's ComfyUI; 7000 is
# published but in no table, so closed by default).
PUBLISHED = {8188: 80, 8080: 80, 5433: 80, 7000: 80}
UNLISTED_HOST_PORT = 9999


def seed_services() -> list[dict[str, Any]]:
    settings = load_settings(EXAMPLE_CONFIG).firewall
    return [s.model_dump(exclude_defaults=True) | {"exposure": s.exposure}
            for s in settings.services]


def write_config(path: Path, state_dir: Path, *, services: list[dict[str, Any]] | None = None,
                 ssh_exposure: str = "tailnet", **firewall: Any) -> Path:
    """A config whose only section is [firewall]."""
    section: dict[str, Any] = {"state_dir": str(state_dir),
                               "textfile_dir": str(state_dir.parent / "textfile"), **firewall,
                               "ssh": {"port": 22, "exposure": ssh_exposure}}
    section["services"] = services if services is not None else \
        seed_services() + EXTRA_SERVICES
    path.write_text(tomlkit.dumps({"firewall": section}))
    return path


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a root shell without SSH or MUSHISHI_ variables."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MUSHISHI_", "SSH_")) and k != "INVOCATION_ID"}
    env.update(extra)
    return env


def host_ports(services: list[dict[str, Any]]) -> list[str]:
    """Listener specs for every service that is not a published container port."""
    specs = ["tcp:22", f"tcp:{UNLISTED_HOST_PORT}"]
    specs += [f"{s.get('proto', 'tcp')}:{s['port']}" for s in services
              if s["port"] not in PUBLISHED]
    return specs


@pytest.fixture(scope="module")
def topology() -> Iterator[Topology]:
    """The box with listeners on every configured port and the Docker stand-in."""
    box = Topology()
    try:
        box.build()
        box.listen(box.box, host_ports(seed_services() + EXTRA_SERVICES))
        box.listen(box.container, ["tcp:80"])
        box.publish(PUBLISHED)
        yield box
    finally:
        box.destroy()


class Box:
    """One test's view: the topology, a fresh state dir and config, CLI helpers."""

    def __init__(self, topology: Topology, tmp_path: Path) -> None:
        self.topology = topology
        self.state_dir = tmp_path / "state"
        self.config = write_config(tmp_path / "mushishi.toml", self.state_dir)
        self.tmp_path = tmp_path

    def mushishi(self, *args: str, check: bool = False, env: dict[str, str] | None = None,
                 config: Path | None = None) -> Any:
        argv = [MUSHISHI, "firewall", *args, "--config", str(config or self.config)]
        return self.topology.run(self.topology.box, argv, check=check, env=env or clean_env())

    def pending(self) -> dict[str, Any] | None:
        path = self.state_dir / "pending.json"
        return json.loads(path.read_text()) if path.exists() else None

    def metrics(self) -> str:
        return (self.tmp_path / "textfile" / "mushishi_firewall.prom").read_text()

    def last(self) -> dict[str, Any]:
        return json.loads((self.state_dir / "last.json").read_text())

    def live_table(self) -> str | None:
        result = self.topology.nft("-s", "list", "table", "inet", "mushishi", check=False)
        return result.stdout if result.returncode == 0 else None


@pytest.fixture
def box(topology: Topology, tmp_path: Path) -> Iterator[Box]:
    """A box with no mushishi table, and no guard left behind afterwards."""
    topology.nft("delete", "table", "inet", "mushishi", check=False)
    state = Box(topology, tmp_path)
    try:
        yield state
    finally:
        pending = state.pending()
        if pending and guard_alive(pending["guard_pid"], pending["token"]):
            os.kill(pending["guard_pid"], signal.SIGKILL)
        topology.nft("delete", "table", "inet", "mushishi", check=False)
