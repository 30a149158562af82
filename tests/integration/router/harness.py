"""An in-process mushishi router wired to real stand-in servers, for integration tests.

The router under test is the real one (`Router` + `serve`), listening on a real TCP port and
a real unix socket; the backends are stand-ins started for real on port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from mushishi.services.egress.app import Egress
from mushishi.services.egress.app import serve as serve_egress
from mushishi.services.router.app import Router, serve
from mushishi.shared.activation import bind_unix
from mushishi.shared.config import load_config
from mushishi.shared.credentials import read_credential
from mushishi.shared.notify import Notifier
from tests.integration.egress.harness import (
    providers_resolver,
    start_providers,
    write_credentials,
)
from tests.standins.cloud import CloudStandin
from tests.standins.egress import EgressStandin
from tests.standins.llamacpp import LlamaCppStandin
from tests.standins.vllm import VllmStandin

PERSONAL_KEY = "sk-test-personal"
PRIVATE_KEY = "sk-test-private-only"
ALL_PROFILES = ["personal", "private", "client", "cloudy", "strictcpu"]


def sha(key: str) -> str:
    """The sha256 hex a [keys] table stores."""
    return hashlib.sha256(key.encode()).hexdigest()


def config_text(*, gpu_url: str, cpu_url: str, egress_socket: str, extra: str = "",
                kimi_url: str = "https://integrate.api.nvidia.com/v1",
                groq_url: str = "https://api.groq.com/openai/v1", kimi_extra: str = "",
                groq_extra: str = "",
                router_extra: str = "", gpu_extra: str = "max_concurrency = 2",
                cpu_extra: str = "", personal_extra: str = "",
                strict_extra: str = "queue_timeout_s = 1",
                private_extra: str = "queue_timeout_s = 1",
                client_extra: str = 'queue_timeout_s = 1\non_mode_mismatch = "error"') -> str:
    """The test box: gpu (modes forensic, agent) and cpu local, kimi and groq cloud."""
    timings = {"probe_interval_s": "0.2", "probe_timeout_s": "0.5", "connect_timeout_s": "0.5",
               "first_byte_timeout_s": "2", "stream_idle_timeout_s": "2",
               "drain_timeout_s": "2",
               "state_dir": f'"{Path(egress_socket).parent}/router-state"'}
    for line in router_extra.splitlines():
        if "=" in line:
            key, _, value = line.partition("=")
            timings[key.strip()] = value.strip()
    router_table = "\n".join(f"{key} = {value}" for key, value in timings.items())
    return f"""
[router]
listen = ["127.0.0.1:4000"]
egress_socket = "{egress_socket}"
unix_peers = {{ "{os.getuid()}" = ["private"] }}
{router_table}

[backends.gpu]
url = "{gpu_url}"
model = "gpu-model"
modes = ["forensic", "agent"]
{gpu_extra}

[backends.cpu]
url = "{cpu_url}"
model = "cpu-alias"
{cpu_extra}

[backends.kimi]
url = "{kimi_url}"
model = "moonshotai/kimi-k2.6"
api_key_credential = "ngc-api-key"
{kimi_extra}

[backends.groq]
url = "{groq_url}"
model = "groq-model"
api_key_credential = "groq-api-key"
{groq_extra}

[profiles.personal]
tier = "T2"
chain = ["gpu", "cpu", "kimi", "groq"]
{personal_extra}

[profiles.private]
tier = "T1"
chain = ["gpu", "cpu"]
{private_extra}

[profiles.client]
tier = "T1-strict"
chain = ["gpu"]
require_mode = "forensic"
{client_extra}

[profiles.cloudy]
tier = "T3"
chain = ["kimi", "cpu"]

[profiles.strictcpu]
tier = "T1-strict"
chain = ["cpu"]
{strict_extra}

[keys]
"{sha(PERSONAL_KEY)}" = {ALL_PROFILES!r}
"{sha(PRIVATE_KEY)}" = ["private"]
{extra}
""".replace("'", '"')


@dataclass
class Box:
    """A running router and its stand-ins; with `real_egress`, the real mushishi-egress in
    front of stand-in cloud providers (`cloud`, the canaries) instead of `egress`."""

    router: Router
    base_url: str  # http://127.0.0.1:PORT
    unix_socket: str
    gpu: VllmStandin
    cpu: LlamaCppStandin
    egress: EgressStandin
    stop: asyncio.Event
    task: asyncio.Task[None]
    cloud: dict[str, CloudStandin] = field(default_factory=dict)
    egress_daemon: Egress | None = None

    @property
    def openai_base(self) -> str:
        """base_url for the openai SDK."""
        return self.base_url + "/v1"


@contextlib.asynccontextmanager
async def running_box(tmp_path: Path, *, bus_address: str | None = None,
                      follow_gpu: bool = False, wait_healthy: bool = True,
                      environ: dict[str, str] | None = None, gpu_url: str | None = None,
                      cpu_url: str | None = None,
                      real_egress: bool = False, egress_extra: str = "",
                      tenants_run_dir: Path | None = None, gpu_tenant: str | None = None,
                      cpu_slots: int | None = None, **config: str) -> AsyncIterator[Box]:
    """Stand-ins + router; everything is stopped on exit. With `real_egress`, cloud hops go
    through the real mushishi-egress to stand-in providers (kimi.test, groq.test). The
    tenants' published probes are read from `tenants_run_dir` (default: none running);
    `gpu_tenant` names a [tenants.*] entry serving the gpu backend's port; `cpu_slots` is
    the cpu stand-in's /props total_slots (none by default)."""
    gpu = await VllmStandin("gpu-model", name="gpu").start()
    cpu = await LlamaCppStandin("cpu-alias", name="cpu", slots=cpu_slots).start()
    socket_path = str(tmp_path / "egress.sock")
    cloud: dict[str, CloudStandin] = {}
    if real_egress:
        kimi, groq = await start_providers()
        cloud = {"kimi": kimi, "groq": groq}
        config.setdefault("kimi_url", f"http://kimi.test:{kimi.port}/v1")
        config.setdefault("groq_url", f"http://groq.test:{groq.port}/v1")
        config["extra"] = config.get("extra", "") + f"""
[egress]
state_dir = "{tmp_path}/egress-state"
allowed_peers = ["{os.getuid()}"]
{egress_extra}
"""
    if gpu_tenant is not None:
        config["extra"] = config.get("extra", "") + f"""
[tenants.{gpu_tenant}]
command = ["/bin/true"]
health_url = "{(gpu_url or gpu.url).removesuffix('/v1')}/health"
vram_mib = 1
"""
    egress = EgressStandin(socket_path)
    if not real_egress:
        await egress.start()
    path = tmp_path / "mushishi.toml"
    path.write_text(config_text(gpu_url=gpu_url or gpu.url, cpu_url=cpu_url or cpu.url,
                                egress_socket=socket_path, **config))
    settings = load_config(path).settings
    egress_daemon: Egress | None = None
    egress_task: asyncio.Task[None] | None = None
    egress_stop = asyncio.Event()
    if real_egress:
        directory = write_credentials(tmp_path / "credentials")
        egress_daemon = Egress(settings, resolver=providers_resolver(cloud["kimi"],
                                                                     cloud["groq"]),
                               credential_reader=lambda name: read_credential(
                                   name, environ={"CREDENTIALS_DIRECTORY": str(directory)}))
        await egress_daemon.start()
        egress_task = asyncio.create_task(serve_egress(
            egress_daemon, [bind_unix(socket_path)], Notifier({}), egress_stop))
    router = Router(settings, bus_address=bus_address, follow_gpu=follow_gpu,
                    environ=environ or {},
                    tenants_run_dir=tenants_run_dir or tmp_path / "tenants")
    await router.start(check_confinement=False)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(128)
    tcp.setblocking(False)
    unix_path = str(tmp_path / "router.sock")
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(unix_path)
    unix.listen(128)
    unix.setblocking(False)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(router, [tcp, unix], Notifier({}), stop))
    box = Box(router, f"http://127.0.0.1:{tcp.getsockname()[1]}", unix_path, gpu, cpu, egress,
              stop, task, cloud, egress_daemon)
    try:
        await asyncio.sleep(0)
        if wait_healthy:
            await wait_for(lambda: all(router.state.verdict(n).state in ("up", "mode_inactive")
                                       for n in ("gpu", "cpu")), what="backends up")
        yield box
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        if egress_task is not None:
            egress_stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(egress_task, 10)
        for server in (gpu, cpu, egress, *cloud.values()):
            await server.stop()


async def wait_for(condition, *, what: str, within: float = 10.0) -> None:
    """Poll `condition` (a real wait for real servers, never for logic under test)."""
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def post_chat(box: Box, model: str) -> tuple[int, dict[str, str], dict]:
    """One chat completion with the personal key: (status, headers, JSON body)."""
    async with aiohttp.ClientSession() as session, session.post(
        box.base_url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {PERSONAL_KEY}"},
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
    ) as response:
        return response.status, dict(response.headers), json.loads(await response.read())
