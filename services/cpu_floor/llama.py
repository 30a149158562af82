"""HTTP probes of llama-server: /health, /v1/models, a smoke chat completion, /metrics.

Every call returns a plain result with its latency instead of raising, so the supervisor's
decisions (in `core`) see data, never exceptions.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from mushishi.services.cpu_floor.core import (
    parse_progress,
    served_names,
    smoke_request,
    smoke_tokens_per_second,
)


@dataclass(frozen=True)
class HealthResult:
    """GET /health: the HTTP status (None when there was no answer) and its latency."""

    status: int | None
    seconds: float
    error: str = ""

    @property
    def ok(self) -> bool:
        """200 means the model is loaded."""
        return self.status == 200

    @property
    def timed_out(self) -> bool:
        """No answer within the timeout."""
        return self.status is None and self.error.startswith("timed out")


@dataclass(frozen=True)
class ModelsResult:
    """GET /v1/models: the names served (None when there was no usable answer)."""

    names: list[str] | None
    error: str = ""


@dataclass(frozen=True)
class SmokeResult:
    """A smoke chat completion."""

    answered: bool
    timed_out: bool
    seconds: float
    tokens_per_second: float | None = None
    error: str = ""


def _describe(error: BaseException, within_s: float) -> str:
    if isinstance(error, TimeoutError):
        return f"timed out after {within_s:g} s"
    if isinstance(error, aiohttp.ClientConnectorError):
        return f"connection failed: {error.os_error.strerror or error.os_error}"
    return f"{type(error).__name__}: {error}"


class LlamaClient:
    """Talks to one llama-server over HTTP; never follows redirects or proxies."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.clock = clock

    async def health(self, within_s: float) -> HealthResult:
        """GET /health."""
        started = self.clock()
        try:
            async with asyncio.timeout(within_s), self.session.get(
                    f"{self.base_url}/health", allow_redirects=False) as response:
                await response.read()
                return HealthResult(response.status, self.clock() - started)
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            return HealthResult(None, self.clock() - started, _describe(error, within_s))

    async def models(self, within_s: float) -> ModelsResult:
        """GET /v1/models, reduced to the names it serves."""
        try:
            async with asyncio.timeout(within_s), self.session.get(
                    f"{self.base_url}/v1/models", allow_redirects=False) as response:
                body = await response.read()
                if response.status != 200:
                    return ModelsResult(None, f"/v1/models answered HTTP {response.status}")
                return ModelsResult(served_names(json.loads(body)))
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as error:
            return ModelsResult(None, _describe(error, within_s))

    async def smoke(self, alias: str, max_tokens: int, within_s: float) -> SmokeResult:
        """POST /v1/chat/completions for `max_tokens` tokens, as the router would."""
        started = self.clock()
        try:
            async with asyncio.timeout(within_s), self.session.post(
                    f"{self.base_url}/v1/chat/completions",
                    json=smoke_request(alias, max_tokens), allow_redirects=False) as response:
                body = await response.read()
                elapsed = self.clock() - started
                if response.status != 200:
                    return SmokeResult(False, False, elapsed, error=f"HTTP {response.status}: "
                                       f"{body[:200].decode('utf-8', 'replace')}")
                answer: Any = json.loads(body)
        except TimeoutError as error:
            return SmokeResult(False, True, self.clock() - started,
                               error=_describe(error, within_s))
        except (aiohttp.ClientError, OSError, ValueError) as error:
            return SmokeResult(False, False, self.clock() - started,
                               error=_describe(error, within_s))
        usage = answer.get("usage") if isinstance(answer, dict) else None
        tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        choices = answer.get("choices") if isinstance(answer, dict) else None
        if not isinstance(tokens, int) or tokens < 1 or not choices:
            return SmokeResult(False, False, elapsed,
                               error=f"no completion in the answer: {str(answer)[:200]}")
        return SmokeResult(True, False, elapsed,
                           tokens_per_second=smoke_tokens_per_second(answer, elapsed))

    async def progress(self, within_s: float) -> float | None:
        """Tokens processed so far (llama-server's /metrics), or None without an answer."""
        try:
            async with asyncio.timeout(within_s), self.session.get(
                    f"{self.base_url}/metrics", allow_redirects=False) as response:
                if response.status != 200:
                    return None
                return parse_progress((await response.read()).decode("utf-8", "replace"))
        except (TimeoutError, aiohttp.ClientError, OSError):
            return None
