"""A stand-in for the router's `GET /status` on a unix socket (the contract in the brief:
sovereignty, backends, profiles, cloud_share {profile: {hour, day, requests_hour,
requests_day}}), until the real router lands.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web


def status_document(cloud_share: dict[str, dict[str, float]]) -> dict[str, Any]:
    """A /status body with the given cloud shares."""
    return {
        "sovereignty": {"config": True, "connect_time": True, "kernel": True, "detail": ""},
        "backends": {"cpu": {"state": "up", "local": True, "modes": [], "in_flight": 0}},
        "profiles": {"private": {"tier": "T1", "would_use": "cpu", "reason": "gpu not in mode"}},
        "cloud_share": cloud_share,
    }


class RouterStatusStandin:
    """Serves `document` on GET /status over a unix socket."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.requests = 0
        self._runner: web.AppRunner | None = None

    async def start(self, socket_path: str) -> None:
        app = web.Application()
        app.router.add_get("/status", self._status)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.UnixSite(self._runner, socket_path).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _status(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.json_response(self.document)
