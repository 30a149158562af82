"""A llama.cpp-like stand-in: the model is served under its alias, and while `loading` every
endpoint answers 503 {"error": {"code": 503, "message": "Loading model", ...}}, as
llama-server does. With `slots`, GET /props answers `{"total_slots": slots, ...}` as
llama-server's does (its `--parallel`); without, /props is absent (404).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.standins.openai_server import Fault, OpenAIStandin

__all__ = ["Fault", "LlamaCppStandin"]


class LlamaCppStandin(OpenAIStandin):
    """llama-server's wire behaviour, with `set_loading()` to script a model load."""

    def __init__(self, alias: str = "llamacpp-standin-alias", *, loading: bool = False,
                 slots: int | None = None, **kwargs: object) -> None:
        kwargs.setdefault("name", "llamacpp")
        super().__init__(alias, **kwargs)  # type: ignore[arg-type]
        self.loading = loading
        self.slots = slots

    def _app(self) -> web.Application:
        app = super()._app()
        app.router.add_get("/props", self._props)
        return app

    async def _props(self, request: web.Request) -> web.Response:
        if self.slots is None:  # no /props here: a 404 in llama-server's error format
            return web.json_response({"error": {"code": 404, "message": "File Not Found",
                                                "type": "not_found_error"}}, status=404)
        props: dict[str, Any] = {"total_slots": self.slots, "model_alias": self.model}
        return web.json_response(props)

    def set_loading(self, loading: bool) -> None:
        """While True: 503 "Loading model" on /health, /v1/models and inference."""
        self.loading = loading
