"""A stand-in cloud provider (Kimi on NVIDIA's endpoint, Groq, OpenRouter): the OpenAI wire
format with a bearer key, streamed `usage` when `stream_options.include_usage` is asked for,
and scriptable 429 with Retry-After and 5xx (openai_server.Fault). Like Groq, it also
transcribes (the Whisper stand-in's /v1/audio/transcriptions and translations, which report
`usage: {"type": "duration", "seconds": N}` as OpenAI does) and speaks (the TTS stand-in's
/v1/audio/speech: audio streamed in pieces, `token_delay` seconds apart).

It records every request it receives, headers and body: it is the cloud canary of the tests
(a T1 request must never appear here). Run alone, e.g. inside a sandbox's network namespace:
`python -m tests.standins.cloud --host 203.0.113.10 --port 8443 --key K --model M`.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from aiohttp import web

from tests.standins.openai_server import Fault, Recorded, serve_forever
from tests.standins.speech import TtsStandin, WhisperStandin

__all__ = ["CloudStandin", "Fault", "main"]


class CloudStandin(WhisperStandin, TtsStandin):
    """An OpenAI-compatible cloud API: 401 without the right bearer key, 404 for another
    model, and the faults a real provider shows (429 + Retry-After, 5xx, hangs, cut streams)."""

    def __init__(self, model: str, key: str, **kwargs: object) -> None:
        kwargs.setdefault("name", "cloud")
        super().__init__(model, **kwargs)  # type: ignore[arg-type]
        self.key = key

    @staticmethod
    def rate_limit(retry_after: str | None) -> Fault:
        """A 429 as OpenAI-compatible providers send it, with Retry-After when given."""
        return Fault.status_code(429, "Rate limit reached", "rate_limit_exceeded",
                                 headers={"Retry-After": retry_after} if retry_after else None)

    def authorized(self) -> list[Any]:
        """Recorded inference requests that carried the right key."""
        return [r for r in self.chat_requests()
                if r.headers.get("Authorization") == f"Bearer {self.key}"]

    async def _transcribe(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.key}":
            self.requests.append(Recorded(request.path, dict(request.headers), None))
            return web.json_response({"error": {
                "message": "Incorrect API key provided", "type": "invalid_request_error",
                "code": "invalid_api_key"}}, status=401)
        return await super()._transcribe(request)

    async def _pre(self, request: web.Request) -> tuple[Any, Fault | None, web.Response | None]:
        if request.headers.get("Authorization") != f"Bearer {self.key}":
            body = await self._record(request)
            return body, None, web.json_response({"error": {
                "message": "Incorrect API key provided", "type": "invalid_request_error",
                "code": "invalid_api_key"}}, status=401)
        return await super()._pre(request)


def main() -> None:
    """CLI: serve until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m tests.standins.cloud")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--model", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--name", default="cloud")
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--record", default=None, help="append each request as JSON lines")
    args = parser.parse_args()
    server = CloudStandin(args.model, args.key, name=args.name, host=args.host, port=args.port,
                          tokens=args.tokens, token_delay=args.token_delay,
                          record_file=args.record)
    asyncio.run(serve_forever(server))


if __name__ == "__main__":
    main()
