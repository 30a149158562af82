"""A stand-in mushishi-egress: the router -> egress protocol (docs/router.md) on a unix socket.

It answers like an OpenAI upstream (streaming included) and records every request with its
X-Mushishi-Profile / -Tier / -Backend headers, so it doubles as the cloud canary: a test
asserts it never received T1 or T1-strict work. Budget exhaustion is scripted per backend
(`exhaust("kimi")` -> 429 with code budget_exhausted).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.standins.openai_server import Fault, OpenAIStandin

__all__ = ["EgressStandin", "Fault"]

SOVEREIGN = ("T1", "T1-strict")


class EgressStandin(OpenAIStandin):
    """Listens on `unix_path`; any model name is accepted (the cloud backend's own)."""

    def __init__(self, unix_path: str, **kwargs: object) -> None:
        kwargs.setdefault("name", "cloud")
        super().__init__("cloud", unix_path=unix_path, accept_any_model=True,
                         **kwargs)  # type: ignore[arg-type]
        self.exhausted: set[str] = set()

    def exhaust(self, backend: str) -> None:
        """Answer budget_exhausted for this cloud backend from now on."""
        self.exhausted.add(backend)

    def sovereign_requests(self) -> list[Any]:
        """Requests that carried a T1 or T1-strict tier: must always be empty."""
        return [r for r in self.requests if r.headers.get("X-Mushishi-Tier") in SOVEREIGN]

    async def _pre(self, request: web.Request) -> tuple[Any, Fault | None, web.Response | None]:
        body, fault, early = await super()._pre(request)
        backend = request.headers.get("X-Mushishi-Backend", "")
        if early is None and backend in self.exhausted:
            return body, None, web.json_response({"error": {
                "message": f"daily budget of {backend} is exhausted", "type": "rate_limit_error",
                "code": "budget_exhausted"}}, status=429)
        return body, fault, early
