"""The real mushishi-egress against stand-in cloud providers, for integration tests.

The providers are `CloudStandin`s started for real on 127.0.0.1, port 0. The config names
them by hostnames (`kimi.test`, `groq.test`): hostnames not in router.local_hosts, so the
egress classifies them as cloud exactly as it would api.groq.com. The egress resolves those
names through a fixed table (`StaticResolver`, like an /etc/hosts); everything else is the
daemon's own code: its socket, peer check, ledger on disk, sessions and relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from mushishi.services.egress.app import Egress, serve
from mushishi.shared.activation import bind_unix
from mushishi.shared.config import MushishiSettings, load_config
from mushishi.shared.credentials import read_credential
from mushishi.shared.notify import Notifier
from tests.paths import REPO
from tests.ports import free_port
from tests.standins.cloud import CloudStandin

KEYS = {"ngc-api-key": "nvapi-test-kimi", "groq-api-key": "gsk-test-groq"}
HEADERS_T2 = {"X-Mushishi-Profile": "personal", "X-Mushishi-Tier": "T2"}
CHAT = {"messages": [{"role": "user", "content": "hello from a test"}]}


class StaticResolver(AbstractResolver):
    """Resolves a fixed table of names (an /etc/hosts for one process); others fail."""

    def __init__(self, table: Mapping[str, str]) -> None:
        self.table = dict(table)

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        address = self.table.get(host)
        if address is None:
            raise OSError(f"{host} is not in the test's name table")
        return [{"hostname": host, "host": address, "port": port, "family": socket.AF_INET,
                 "proto": 0, "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        """Nothing to close."""


def config_text(tmp: Path, *, kimi_port: int, groq_port: int, kimi_extra: str = "",
                groq_extra: str = "", egress_extra: str = "", extra: str = "",
                allowed_peers: str | None = None) -> str:
    """A box with a local gpu, kimi and groq in the cloud, and T1/T2/T3 profiles."""
    return f"""
[router]
egress_socket = "{tmp}/egress.sock"
state_dir = "{tmp}/router-state"
first_byte_timeout_s = 2
stream_idle_timeout_s = 2

[backends.gpu]
url = "http://127.0.0.1:1/v1"
model = "gpu-model"

[backends.kimi]
url = "http://kimi.test:{kimi_port}/v1"
model = "moonshotai/kimi-k2.6"
api_key_credential = "ngc-api-key"
{kimi_extra}

[backends.groq]
url = "http://groq.test:{groq_port}/v1"
model = "groq-model"
api_key_credential = "groq-api-key"
{groq_extra}

[profiles.personal]
tier = "T2"
chain = ["gpu", "kimi", "groq"]

[profiles.private]
tier = "T1"
chain = ["gpu"]

[profiles.client]
tier = "T1-strict"
chain = ["gpu"]

[profiles.cloudy]
tier = "T3"
chain = ["kimi"]

[egress]
state_dir = "{tmp}/egress-state"
allowed_peers = ["{allowed_peers or os.getuid()}"]
metrics_listen = "127.0.0.1:{free_port()}"
cooldown_after_failures = 2
cooldown_s = 30
drain_timeout_s = 5
{egress_extra}
{extra}
"""


def write_credentials(directory: Path, names: tuple[str, ...] = tuple(KEYS)) -> Path:
    """The keys as systemd would place them ($CREDENTIALS_DIRECTORY/<name>)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_text(KEYS[name] + "\n")
    return directory


@dataclass
class EgressBox:
    """A running egress, its providers and its config."""

    egress: Egress
    settings: MushishiSettings
    config_path: Path
    socket_path: str
    kimi: CloudStandin
    groq: CloudStandin
    stop: asyncio.Event
    task: asyncio.Task[None]

    def session(self) -> aiohttp.ClientSession:
        """A client on the egress socket, as the router uses it."""
        return aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=self.socket_path))

    async def post(self, backend: str, body: dict[str, Any] | None = None, *,
                   path: str = "/v1/chat/completions",
                   headers: Mapping[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
        """One request as the router sends it; (status, parsed JSON or text, headers)."""
        sent = {**HEADERS_T2, "X-Mushishi-Backend": backend, **(headers or {})}
        async with self.session() as session, session.post(
                f"http://egress{path}", json={**CHAT, **(body or {})},
                headers=sent) as response:
            text = await response.text()
            try:
                parsed: Any = await response.json(content_type=None)
            except ValueError:
                parsed = text
            return response.status, parsed, dict(response.headers)

    async def stream(self, backend: str, body: dict[str, Any] | None = None,
                     headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        """A streamed request; the raw SSE bytes."""
        sent = {**HEADERS_T2, "X-Mushishi-Backend": backend, **(headers or {})}
        async with self.session() as session, session.post(
                "http://egress/v1/chat/completions",
                json={**CHAT, "stream": True, **(body or {})}, headers=sent) as response:
            return response.status, await response.read()


def providers_resolver(kimi: CloudStandin, groq: CloudStandin) -> StaticResolver:
    """kimi.test and groq.test are the stand-ins (both on 127.0.0.1)."""
    return StaticResolver({"kimi.test": kimi.host, "groq.test": groq.host})


async def start_providers(**kwargs: Any) -> tuple[CloudStandin, CloudStandin]:
    """The two stand-in providers, listening."""
    kimi = await CloudStandin("moonshotai/kimi-k2.6", KEYS["ngc-api-key"], name="kimi",
                              **kwargs).start()
    groq = await CloudStandin("groq-model", KEYS["groq-api-key"], name="groq",
                              **kwargs).start()
    return kimi, groq


@contextlib.asynccontextmanager
async def running_egress(tmp_path: Path, *, kimi: CloudStandin | None = None,
                         groq: CloudStandin | None = None, clock: Any = None,
                         credentials: tuple[str, ...] = tuple(KEYS),
                         **config: str) -> AsyncIterator[EgressBox]:
    """Providers (unless given) and the egress serving on tmp_path/egress.sock."""
    own = kimi is None or groq is None
    if own:
        kimi, groq = await start_providers()
    assert kimi is not None and groq is not None
    path = tmp_path / "mushishi.toml"
    if not path.exists() or config:
        path.write_text(config_text(tmp_path, kimi_port=kimi.port, groq_port=groq.port,
                                    **config))
    settings = load_config(path).settings
    directory = write_credentials(tmp_path / f"credentials-{len(credentials)}", credentials)
    egress = Egress(settings, clock=clock, resolver=providers_resolver(kimi, groq),
                    credential_reader=lambda name: read_credential(
                        name, environ={"CREDENTIALS_DIRECTORY": str(directory)}))
    await egress.start()
    socket_path = settings.router.egress_socket
    sock = bind_unix(socket_path)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(egress, [sock], Notifier({}), stop))
    box = EgressBox(egress, settings, path, socket_path, kimi, groq, stop, task)
    try:
        await asyncio.sleep(0)
        yield box
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 15)
        if own:
            await kimi.stop()
            await groq.stop()


class EgressProcess:
    """mushishi-egress as a real process (tests/integration/egress/run_egress.py)."""

    def __init__(self, config: Path, hosts: dict[str, str], credentials: Path,
                 log: Path) -> None:
        self.config = config
        self.hosts = hosts
        self.credentials = credentials
        self.log = log
        self.socket = load_config(config).settings.router.egress_socket
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MUSHISHI_", "LISTEN_"))}
        env.update({"PYTHONPATH": str(REPO), "CREDENTIALS_DIRECTORY": str(self.credentials)})
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.integration.egress.run_egress", "--config",
                 str(self.config), "--hosts", json.dumps(self.hosts)],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            assert self.process.poll() is None, self.log.read_text()
            try:
                async with self.session() as session, session.get(
                        "http://egress/health") as response:
                    if response.status == 200:
                        return
            except (aiohttp.ClientError, OSError):
                pass
            assert asyncio.get_running_loop().time() < deadline, self.log.read_text()
            await asyncio.sleep(0.05)

    def session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=self.socket))

    def kill(self, signum: int) -> int:
        assert self.process is not None
        self.process.send_signal(signum)
        return self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill(signal.SIGTERM)
