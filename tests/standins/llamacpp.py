"""A llama.cpp-like stand-in: the model is served under its alias, and while `loading` every
endpoint answers 503 {"error": {"code": 503, "message": "Loading model", ...}}, as
llama-server does.
"""

from __future__ import annotations

from tests.standins.openai_server import Fault, OpenAIStandin

__all__ = ["Fault", "LlamaCppStandin"]


class LlamaCppStandin(OpenAIStandin):
    """llama-server's wire behaviour, with `set_loading()` to script a model load."""

    def __init__(self, alias: str = "llamacpp-standin-alias", *, loading: bool = False,
                 **kwargs: object) -> None:
        kwargs.setdefault("name", "llamacpp")
        super().__init__(alias, **kwargs)  # type: ignore[arg-type]
        self.loading = loading

    def set_loading(self, loading: bool) -> None:
        """While True: 503 "Loading model" on /health, /v1/models and inference."""
        self.loading = loading
