"""A stand-in for the router's `GET /status` on a unix socket, serving a whole body of the
contract (shared/router_status.py) with the cloud shares a test needs; the rest is a
quiet box: one local backend up, one T1 profile served by it.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web


def status_document(cloud_share: dict[str, dict[str, float]]) -> dict[str, Any]:
    """A /status body with the given cloud shares ({profile: {hour, day, requests_hour,
    requests_day}}; the cloud request counts follow from them)."""
    shares = {profile: {"cloud_requests_hour": round(entry["hour"] * entry["requests_hour"]),
                        "cloud_requests_day": round(entry["day"] * entry["requests_day"]),
                        **entry}
              for profile, entry in cloud_share.items()}
    return {
        "version": "0.1.0", "draining": False, "in_flight": 0,
        "sovereignty": {"config": True, "connect_time": True, "kernel": True,
                        "tenants": True, "detail": "",
                        "tenants_detail": "no tenant is running", "tenant_verdicts": {},
                        "summary": "config ✓, connect-time ✓, kernel ✓, tenants ✓"},
        "gpu": {"present": False, "active_mode": None, "state": None},
        "backends": {"cpu": {"state": "up", "reason": "healthy", "local": True,
                             "locality": "127.0.0.1 is inside router.local_networks",
                             "modes": [], "in_flight": 0, "queued": 0,
                             "max_concurrency": None, "model": "nemotron-cpu-prism"}},
        "profiles": {"private": {"tier": "T1", "chain": ["cpu"], "would_use": "cpu",
                                 "reason": "gpu not in mode", "queued": 0,
                                 "require_mode": None}},
        "cloud_share": shares,
        "reload": {"pending_restart": [], "detail": "no reload since the router started"},
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
