"""I/O of a bench run: the completions (aiohttp, no proxies, no redirects) and gpud's GPU
readings over D-Bus while they run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp

from mushishi.services.bench.core import (
    PROMPTS,
    WARM_UP_PROMPT,
    Completion,
    Target,
    request_body,
)
from mushishi.shared.bus import BusError
from mushishi.shared.config.router import connect_url, parse_listen
from mushishi.shared.gpumode import GpuModeClient, GpuModeProperties
from mushishi.shared.locality import parse_backend_url


class BenchError(Exception):
    """A target that could not be measured; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a target's completions are sent, and as what model."""

    url: str  # full URL of /chat/completions
    model: str
    unix_socket: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def backend_endpoint(url: str, model: str) -> Endpoint:
    """A backend's chat completions endpoint (http(s) or unix:)."""
    address = parse_backend_url(url)
    if address.unix_path is not None:
        return Endpoint(f"http://localhost{address.base_path}/chat/completions", model,
                        address.unix_path)
    return Endpoint(f"{address.origin}{address.base_path}/chat/completions", model)


def router_endpoint(listen: list[str], profile: str, api_key: str | None) -> Endpoint:
    """The router's endpoint for a profile: its unix socket when it has one (no key needed
    for a mapped uid), else its first TCP address."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    tcp = None
    for address in listen:
        host, port = parse_listen(address)
        if host == "unix":
            return Endpoint("http://localhost/v1/chat/completions", profile, str(port),
                            headers)
        if tcp is None:
            tcp = connect_url(host, int(port))
    if tcp is None:
        raise BenchError("router.listen has no address to send profile targets to")
    return Endpoint(f"{tcp}/v1/chat/completions", profile, None, headers)


@contextlib.asynccontextmanager
async def session_for(endpoint: Endpoint, timeout_s: float) -> AsyncIterator[
        aiohttp.ClientSession]:
    """An HTTP session for the endpoint: never a proxy from the environment."""
    connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=endpoint.unix_socket) \
        if endpoint.unix_socket else aiohttp.TCPConnector()
    async with aiohttp.ClientSession(connector=connector, trust_env=False,
                                     timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        yield session


async def complete(session: aiohttp.ClientSession, endpoint: Endpoint, prompt: str,
                   max_tokens: int, fallback_backend: str) -> Completion:
    """One timed chat completion."""
    body = request_body(endpoint.model, prompt, max_tokens)
    started = time.perf_counter()
    try:
        async with session.post(endpoint.url, json=body, headers=endpoint.headers,
                                allow_redirects=False) as response:
            raw = await response.read()
            seconds = time.perf_counter() - started
            backend = response.headers.get("X-Mushishi-Backend", fallback_backend)
            status = response.status
    except TimeoutError:
        raise BenchError(f"{endpoint.url}: no answer within the request timeout "
                         "(bench.request_timeout_s)") from None
    except (aiohttp.ClientError, OSError) as error:
        where = endpoint.unix_socket or endpoint.url
        raise BenchError(f"cannot reach {where}: {type(error).__name__}: {error}") from None
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if status != 200:
        message = ""
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            message = str(data["error"].get("message", ""))[:300]
        raise BenchError(f"{endpoint.url} answered {status}" + (f": {message}" if message
                                                                   else ""))
    usage = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict) or not isinstance(usage.get("completion_tokens"), int):
        raise BenchError(f"{endpoint.url} answered without usage.completion_tokens: tokens/s "
                         "cannot be measured")
    return Completion(int(usage.get("prompt_tokens") or 0), int(usage["completion_tokens"]),
                      seconds, backend)


async def run_target(endpoint: Endpoint, target: Target, *, max_tokens: int, repeats: int,
                     timeout_s: float, progress: Callable[[str], None]) -> list[Completion]:
    """A warm-up, then the prompt set `repeats` times."""
    fallback = target.name if target.kind == "backend" else "unknown"
    done: list[Completion] = []
    async with session_for(endpoint, timeout_s) as session:
        progress(f"{target.label}: warming up")
        await complete(session, endpoint, WARM_UP_PROMPT, 8, fallback)
        total = len(PROMPTS) * repeats
        for repeat in range(repeats):
            for index, prompt in enumerate(PROMPTS):
                progress(f"{target.label}: prompt {repeat * len(PROMPTS) + index + 1}/{total}")
                done.append(await complete(session, endpoint, prompt, max_tokens, fallback))
    return done


# -- gpud ----------------------------------------------------------------------------------

class GpuWatch:
    """gpud's properties, read once and then sampled while a target runs. Absent gpud (or no
    bus) leaves every reading None: the CSV's GPU columns stay empty."""

    def __init__(self, client: GpuModeClient | None) -> None:
        self.client = client
        self.powers: list[float] = []
        self.temperatures: list[float] = []

    @classmethod
    async def connect(cls, address: str | None = None, limit_s: float = 2.0) -> GpuWatch:
        """Connect to the system bus; no bus is not an error here."""
        try:
            async with asyncio.timeout(limit_s):
                return cls(await GpuModeClient.connect(address, timeout_s=2.0))
        except Exception:  # no bus on this machine: run without GPU readings
            return cls(None)

    async def properties(self) -> GpuModeProperties | None:
        """gpud's properties, or None when it is not on the bus."""
        if self.client is None:
            return None
        try:
            return await self.client.properties()
        except (BusError, TimeoutError, OSError):
            return None

    async def active_mode(self) -> str | None:
        """The GPU mode gpud reports (None without gpud)."""
        props = await self.properties()
        return props.active_mode or None if props else None

    async def sample(self, interval_s: float) -> None:
        """Record power and temperature until cancelled."""
        while True:
            props = await self.properties()
            if props is not None:
                if props.power_w is not None:
                    self.powers.append(props.power_w)
                if props.temperature_c is not None:
                    self.temperatures.append(float(props.temperature_c))
            await asyncio.sleep(interval_s)

    def take(self) -> tuple[float | None, float | None]:
        """Mean power and peak temperature since the last take."""
        power = sum(self.powers) / len(self.powers) if self.powers else None
        temperature = max(self.temperatures) if self.temperatures else None
        self.powers, self.temperatures = [], []
        return power, temperature

    def close(self) -> None:
        """Disconnect."""
        if self.client is not None:
            self.client.close()
