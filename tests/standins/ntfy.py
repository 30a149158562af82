"""A stand-in ntfy server speaking ntfy's publish API (ntfy itself cannot run here).

It follows binwiederhier/ntfy's docs/publish.md: JSON publishing to the ROOT URL with the
topic in the body; a plain body POSTed or PUT to `/<topic>` with X-Title/X-Priority/X-Tags/
X-Markdown headers (and their aliases); `Authorization: Bearer <token>` when a token is
required (403 40301 without one, 401 40101 with a wrong one); HTTP 429 with
`{"code":42901,…}` when rate limited; `GET /v1/health`. A JSON body POSTed to `/<topic>` is
published as raw text, as the real server does (the classic client mistake).

Every request is recorded exactly (method, path, raw headers in order, raw body), and every
accepted message as the server would store it. Run in-process (`NtfyStandin`) or as a
process (`python -m tests.standins.ntfy --port-file F --record F`), which appends each
request as a JSON line to the record file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

_PRIORITIES = {"min": 1, "low": 2, "default": 3, "high": 4, "max": 5, "urgent": 5}


@dataclass
class Received:
    """One HTTP request exactly as it arrived."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """A header's value, case-insensitively (ntfy's headers are case-insensitive)."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    def as_record(self) -> dict[str, Any]:
        """A JSON-serialisable form (for the process mode's record file)."""
        return {"method": self.method, "path": self.path, "headers": self.headers,
                "body": self.body.decode("utf-8", "replace")}


@dataclass
class Published:
    """A message as ntfy stores it."""

    id: str
    time: int
    topic: str
    message: str
    title: str | None = None
    priority: int | None = None
    tags: list[str] = field(default_factory=list)
    markdown: bool = False


def _error(status: int, code: int, text: str) -> web.Response:
    return web.json_response({"code": code, "http": status, "error": text,
                              "link": "https://ntfy.sh/docs/publish/"}, status=status)


def _header(request: web.Request, *names: str) -> str | None:
    for name in names:
        if name in request.headers:
            return request.headers[name]
        if name.lower() in request.query:
            return request.query[name.lower()]
    return None


class NtfyStandin:
    """The server; `requests` and `messages` are what it received and accepted."""

    def __init__(self, *, token: str | None = None, record_file: Path | None = None) -> None:
        self.token = token
        self.record_file = record_file
        self.requests: list[Received] = []
        self.messages: list[Published] = []
        self.rate_limited_requests = 0  # answer this many next publishes with 429
        self.port: int | None = None
        self._runner: web.AppRunner | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application()
        app.router.add_get("/v1/health", self._health)
        app.router.add_route("POST", "/", self._publish_json)
        app.router.add_route("PUT", "/", self._publish_json)
        app.router.add_route("POST", "/{topic}", self._publish_topic)
        app.router.add_route("PUT", "/{topic}", self._publish_topic)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen (port 0: any free port); returns the port."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        sockets = site._server.sockets  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Stop listening (the server is then 'down')."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    # -- handlers ----------------------------------------------------------------------
    async def _record(self, request: web.Request) -> Received:
        received = Received(request.method, request.path_qs,
                            [(k.decode("latin-1"), v.decode("latin-1"))
                             for k, v in request.raw_headers],
                            await request.read())
        self.requests.append(received)
        if self.record_file is not None:
            with self.record_file.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(received.as_record()) + "\n")
        return received

    def _denied(self, request: web.Request) -> web.Response | None:
        if self.token is None:
            return None
        given = request.headers.get("Authorization")
        if given is None:
            return _error(403, 40301, "forbidden")
        if given != f"Bearer {self.token}":
            return _error(401, 40101, "unauthorized")
        return None

    def _limited(self) -> web.Response | None:
        if self.rate_limited_requests > 0:
            self.rate_limited_requests -= 1
            return _error(429, 42901, "limit reached: too many requests")
        return None

    def _accept(self, published: Published) -> web.Response:
        self.messages.append(published)
        body = {k: v for k, v in asdict(published).items() if v not in (None, [], False)}
        body["event"] = "message"
        body["expires"] = published.time + 43200
        if published.markdown:
            body.pop("markdown", None)
            body["content_type"] = "text/markdown"
        return web.json_response(body)

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"healthy": True})

    async def _publish_json(self, request: web.Request) -> web.Response:
        received = await self._record(request)
        denied = self._denied(request) or self._limited()
        if denied is not None:
            return denied
        try:
            data = received.json()
        except ValueError:
            return _error(400, 40017, "invalid request: request body must be message JSON")
        if not isinstance(data, dict) or not data.get("topic"):
            return _error(400, 40009, "invalid request: topic invalid")
        priority = data.get("priority")
        if priority is not None and (not isinstance(priority, int) or not 1 <= priority <= 5):
            return _error(400, 40007, "invalid request: priority invalid")
        return self._accept(Published(
            secrets.token_hex(6), int(time.time()), str(data["topic"]),
            str(data.get("message", "triggered")), data.get("title"), priority,
            list(data.get("tags") or []), bool(data.get("markdown"))))

    async def _publish_topic(self, request: web.Request) -> web.Response:
        received = await self._record(request)
        denied = self._denied(request) or self._limited()
        if denied is not None:
            return denied
        raw_priority = _header(request, "X-Priority", "Priority", "prio", "p")
        priority = None
        if raw_priority is not None:
            priority = _PRIORITIES.get(raw_priority.lower()) or (
                int(raw_priority) if raw_priority.isdigit() else None)
            if priority is None or not 1 <= priority <= 5:
                return _error(400, 40007, "invalid request: priority invalid")
        tags = _header(request, "X-Tags", "Tags", "Tag", "ta")
        markdown = (_header(request, "X-Markdown", "Markdown", "md") or "").lower() in (
            "1", "yes", "true")
        return self._accept(Published(
            secrets.token_hex(6), int(time.time()), request.match_info["topic"],
            received.body.decode("utf-8", "replace") or "triggered",
            _header(request, "X-Title", "Title", "t"), priority,
            [t.strip() for t in tags.split(",")] if tags else [], markdown))


async def _serve(args: argparse.Namespace) -> None:
    server = NtfyStandin(token=args.token, record_file=Path(args.record))
    port = await server.start(args.host, args.port)
    Path(args.port_file).write_text(str(port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stop.set)
    await stop.wait()
    await server.stop()


def main() -> None:
    """Serve until SIGTERM, recording requests to --record."""
    parser = argparse.ArgumentParser(prog="python -m tests.standins.ntfy")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--record", required=True)
    parser.add_argument("--token")
    asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
