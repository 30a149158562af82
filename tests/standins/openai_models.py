"""A stand-in for an OpenAI-compatible `GET /v1/models` (llama-server's answer shape), for
the watchdog's CPU-floor readiness read.
"""

from __future__ import annotations

from aiohttp import web


class ModelsStandin:
    """Lists `names` the way llama-server does (`data[].id`, plus `models[]`)."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.port: int | None = None
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({
            "object": "list",
            "data": [{"id": n, "object": "model", "owned_by": "llamacpp"} for n in self.names],
            "models": [{"name": n, "model": n} for n in self.names],
        })
