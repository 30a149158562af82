"""Stand-in servers (tests/standins) run as host processes inside a sandbox's network
namespace: started with `python -m <module>`, ready once they print their "listening" line,
and stopped together (SIGTERM, then SIGKILL after 10 s)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from devtools.sandbox import Sandbox
from tests.paths import REPO


class HostStandins:
    """The stand-ins a test module started in `box`'s network namespace."""

    def __init__(self, box: Sandbox) -> None:
        self.box = box
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, module: str, *args: str) -> subprocess.Popen[bytes]:
        """`python -m module *args` in the sandbox's network namespace, once it listens."""
        argv = self.box.net_command([sys.executable, "-m", module, *args])
        process = subprocess.Popen(argv, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.processes.append(process)
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        assert line.startswith("listening"), line
        return process

    def stop(self) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()


def recorded(path: Path) -> list[dict]:
    """The requests a stand-in wrote to its --record file (JSON lines); [] before any."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def cloud_config(cloud: str, key: str, profiles: Sequence[str], *, router: str = "",
                 kimi: str = "", backends: str = "", private_queue_s: float = 1,
                 more_profiles: str = "", drain_timeout_s: float | None = None,
                 rest: str = "") -> str:
    """A config for a cloud world: the router on 127.0.0.1:4000 and its unix socket, a local
    backend `cpu` (127.0.0.1:8001) and the provider `kimi` on `cloud`:8443, profiles
    `private` (T1, cpu) and `cloudy` (T3, kimi), ntfy unreachable and `key` allowed
    `profiles`. The other arguments add to their sections; `drain_timeout_s` sets the
    router's and the egress's drain (and the egress's cooldown out of the way)."""
    drain = f"drain_timeout_s = {drain_timeout_s:g}" if drain_timeout_s is not None else ""
    egress = (f"\n[egress]\ncooldown_after_failures = 1000\n{drain}\n"
              if drain_timeout_s is not None else "")
    allowed = ", ".join(f'"{profile}"' for profile in profiles)
    return f"""
[router]
listen = ["127.0.0.1:4000", "unix:/run/mushishi/router.sock"]
connect_timeout_s = 1
probe_interval_s = 0.5
{drain}
{router}

[backends.cpu]
url = "http://127.0.0.1:8001/v1"
model = "cpu-alias"

[backends.kimi]
url = "http://{cloud}:8443/v1"
model = "moonshotai/kimi-k2.6"
api_key_credential = "ngc-api-key"
{kimi}
{backends}

[profiles.private]
tier = "T1"
chain = ["cpu"]
queue_timeout_s = {private_queue_s:g}

[profiles.cloudy]
tier = "T3"
chain = ["kimi"]
{more_profiles}
{egress}
[ntfy]
url = "http://127.0.0.1:9"
{rest}
[keys]
"{hashlib.sha256(key.encode()).hexdigest()}" = [{allowed}]
"""


@dataclass
class CloudWorld:
    """A booted sandbox with mushishi installed, the router and egress sockets started, and
    stand-in providers on `address` (a "cloud" address on lo) recording into `records`."""

    box: Sandbox
    records: Path


@contextlib.contextmanager
def cloud_world(config: str, credentials: dict[str, str], address: str,
                start: Callable[[HostStandins, Path], None]) -> Iterator[CloudWorld]:
    """Boot, add `address` to lo, `start(standins, records)`, install `config`, start the
    router's and the egress's sockets; everything is stopped on exit."""
    box = Sandbox()
    box.boot()
    standins = HostStandins(box)
    try:
        box.run(f"ip addr add {address}/32 dev lo")
        records = box.shared / "cloud.jsonl"
        start(standins, records)
        box.install(config, credentials=credentials)
        box.systemctl("start", "mushishi-router.socket", "mushishi-egress.socket")
        yield CloudWorld(box, records)
    finally:
        standins.stop()
        box.stop()
