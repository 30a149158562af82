"""The soak's clients, as users run them: the official openai SDK and the official anthropic
SDK (both with max_retries=0, on their own keep-alive pools) and a raw aiohttp keep-alive
client, each streamed and not. Each request ends in one outcome:

* `ok`: a complete answer (a stream with its finish: `[DONE]`, a finish_reason, message_stop);
* `code:<code>`: an error with one of the router's documented availability codes
  (docs/router.md "Errors"), as an HTTP error or, after the first byte, an SSE error event;
* `fail:<kind>`: anything else, which the soak reports as a lost request: a client-side
  connection error, a timeout, a stream cut without an error event, an unexpected code.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
import anthropic
import httpx2 as httpx
import openai

from benchmarks.soak.stack import KEY, PROFILES
from benchmarks.soak.standins import T1_MARKER

ROUTER = "http://127.0.0.1:4000"
MAX_TOKENS = 16
# The codes a valid request may end with when backends fail (docs/router.md "Errors"); the
# others (invalid_request, invalid_api_key …) would mean the soak's request was refused.
AVAILABILITY_CODES = frozenset({"sovereign_backends_unavailable", "all_backends_failed",
                                "budget_exhausted", "backend_failed", "mode_mismatch"})
KINDS = ("openai", "openai-stream", "aiohttp", "aiohttp-stream", "anthropic",
         "anthropic-stream")


@dataclass
class Outcome:
    """One request's end, as the report counts it."""

    client: str
    profile: str
    outcome: str
    status: int | None
    started: float  # seconds since the soak began
    seconds: float
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def error_code(body: Any) -> str | None:
    """The `code` of an OpenAI- or Anthropic-shaped error body (or of its `error` member)."""
    if not isinstance(body, dict):
        return None
    inner = body.get("error")
    if isinstance(inner, dict) and inner.get("code") is not None:
        return str(inner["code"])
    if body.get("code") is not None:
        return str(body["code"])
    return None


def coded(code: str | None, status: int | None) -> str:
    if code in AVAILABILITY_CODES:
        return f"code:{code}"
    return f"fail:unexpected_error:{status}:{code}"


class Clients:
    """One pool per client library, shared by every worker (keep-alive across requests)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.openai = openai.AsyncOpenAI(base_url=f"{ROUTER}/v1", api_key=KEY, max_retries=0,
                                         timeout=timeout_s)
        self.anthropic = anthropic.AsyncAnthropic(base_url=ROUTER, api_key=KEY, max_retries=0,
                                                  timeout=timeout_s)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=timeout_s))

    async def close(self) -> None:
        await self.openai.close()
        await self.anthropic.close()
        await self.session.close()

    async def one(self, kind: str, profile: str, sequence: int, origin: float) -> Outcome:
        """Send one request of `kind` for `profile` and classify how it ended."""
        tier = PROFILES[profile]
        content = f"{T1_MARKER if tier == 'T1' else 'soak-' + tier + '-'}{sequence}: say hi"
        started = time.monotonic()
        status: int | None = None
        detail = ""
        try:
            outcome, status, detail = await asyncio.wait_for(
                self._send(kind, profile, content), self.timeout_s + 5)
        except (TimeoutError, openai.APITimeoutError, anthropic.APITimeoutError,
                httpx.TimeoutException) as error:
            outcome, detail = "fail:timeout", type(error).__name__
        except (openai.APIConnectionError, anthropic.APIConnectionError, httpx.HTTPError,
                aiohttp.ClientError, OSError) as error:
            cause = error.__cause__ or error
            outcome = f"fail:connection_error:{type(cause).__name__}"
            detail = f"{type(error).__name__}: {error}"[:300]
        return Outcome(kind, profile, outcome, status, started - origin,
                       time.monotonic() - started, detail)

    async def _send(self, kind: str, profile: str, content: str) -> tuple[str, int | None, str]:
        messages = [{"role": "user", "content": content}]
        if kind.startswith("openai"):
            return await self._openai(profile, messages, kind.endswith("stream"))
        if kind.startswith("anthropic"):
            return await self._anthropic(profile, messages, kind.endswith("stream"))
        return await self._aiohttp(profile, messages, kind.endswith("stream"))

    async def _openai(self, profile: str, messages: list[dict[str, Any]],
                      stream: bool) -> tuple[str, int | None, str]:
        try:
            if not stream:
                answer = await self.openai.chat.completions.create(
                    model=profile, messages=messages, max_tokens=MAX_TOKENS)  # type: ignore
                return ("ok" if answer.choices else "fail:empty_answer"), 200, ""
            chunks = await self.openai.chat.completions.create(
                model=profile, messages=messages, max_tokens=MAX_TOKENS,  # type: ignore
                stream=True)
            finished = False
            async for chunk in chunks:
                if chunk.choices and chunk.choices[0].finish_reason:
                    finished = True
            # The SDK ends quietly at the end of the body: a cut stream has no finish_reason.
            return ("ok" if finished else "fail:stream_cut_without_error"), 200, ""
        except openai.APIStatusError as error:
            return (coded(error_code(error.body), error.status_code), error.status_code,
                    str(error.message)[:200])
        except openai.APIConnectionError:
            raise
        except openai.APIError as error:  # an SSE error event inside a stream
            return coded(error_code(error.body), 200), 200, f"stream error event: {error}"[:200]

    async def _anthropic(self, profile: str, messages: list[dict[str, Any]],
                         stream: bool) -> tuple[str, int | None, str]:
        try:
            if not stream:
                answer = await self.anthropic.messages.create(
                    model=profile, max_tokens=MAX_TOKENS, messages=messages)  # type: ignore
                return ("ok" if answer.stop_reason else "fail:no_stop_reason"), 200, ""
            stopped = False
            async with self.anthropic.messages.stream(
                    model=profile, max_tokens=MAX_TOKENS,
                    messages=messages) as events:  # type: ignore[arg-type]
                async for event in events:
                    if event.type == "message_stop":
                        stopped = True
            return ("ok" if stopped else "fail:stream_cut_without_error"), 200, ""
        except anthropic.APIStatusError as error:
            return (coded(error_code(error.body), error.status_code), error.status_code,
                    str(error.message)[:200])
        except anthropic.APIConnectionError:
            raise
        except anthropic.APIError as error:
            return coded(error_code(error.body), 200), 200, f"stream error event: {error}"[:200]

    async def _aiohttp(self, profile: str, messages: list[dict[str, Any]],
                       stream: bool) -> tuple[str, int | None, str]:
        body = {"model": profile, "messages": messages, "max_tokens": MAX_TOKENS,
                "stream": stream}
        async with self.session.post(f"{ROUTER}/v1/chat/completions", json=body,
                                     headers={"Authorization": f"Bearer {KEY}"}) as response:
            if response.status != 200:
                raw = await response.read()
                try:
                    answer = json.loads(raw)
                except ValueError:
                    answer = None
                return coded(error_code(answer), response.status), response.status, ""
            if not stream:
                answer = await response.json()
                return ("ok" if answer.get("choices") else "fail:empty_answer"), 200, ""
            done = False
            code: str | None = None
            async for line in response.content:
                line = line.strip()
                if line == b"data: [DONE]":
                    done = True
                elif line.startswith(b"data: ") and b'"error"' in line:
                    try:
                        code = error_code(json.loads(line[6:])) or "unparsed"
                    except ValueError:
                        code = "unparsed"
            if code is not None:
                return coded(code, 200), 200, "stream error event"
            return ("ok" if done else "fail:stream_cut_without_error"), 200, ""
