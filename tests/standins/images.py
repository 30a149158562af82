"""A stand-in OpenAI image server (what LocalAI, stable-diffusion.cpp's server or an OpenAI-
compatible image gateway answer): POST /v1/images/generations (JSON: model, prompt, n, size,
response_format b64_json|url, seed) and /v1/images/edits (multipart: image, mask, prompt, n,
size). It is a STAND-IN (no model runs here): each "image" is a real PNG of the requested
size in one colour derived from the prompt (and, for an edit, the uploaded image's sha256),
so a test can tell what the server was given.

Inherits the OpenAI stand-in's lifecycle, /health, /v1/models, recorded requests and scripted
faults.
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

from aiohttp import BodyPartReader, web

from tests.standins.comfyui import png
from tests.standins.openai_server import Fault, OpenAIStandin, Recorded

__all__ = ["Fault", "ImageStandin", "png"]


class ImageStandin(OpenAIStandin):
    """An OpenAI-compatible image server (stand-in)."""

    def __init__(self, model: str = "image-standin", **kwargs: Any) -> None:
        kwargs.setdefault("name", "images")
        super().__init__(model, **kwargs)

    def _app(self) -> web.Application:
        app = super()._app()
        app.router.add_post("/v1/images/generations", self._generate)
        app.router.add_post("/v1/images/edits", self._edit)
        return app

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body, _, early = await self._pre(request)
        if early is not None:
            return early
        if not isinstance(body.get("prompt"), str):
            return _error("prompt is required")
        return self._images(body, body["prompt"])

    async def _edit(self, request: web.Request) -> web.StreamResponse:
        fields: dict[str, Any] = {}
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            assert isinstance(part, BodyPartReader), "nested multipart is not a form"
            data = await part.read()
            if part.filename is None:
                fields[part.name or ""] = data.decode()
            else:
                fields[part.name or ""] = {"filename": part.filename, "bytes": len(data),
                                           "sha256": hashlib.sha256(data).hexdigest()}
        self.requests.append(Recorded(request.path, dict(request.headers), fields))
        fault = self._next_fault()
        if fault is not None and fault.kind == "status":
            return web.json_response(fault.body, status=fault.status)
        if fields.get("model") != self.model:
            return _error(f"model {fields.get('model')!r} is not loaded", 404)
        image = fields.get("image") or fields.get("image[]")
        if not isinstance(image, dict) or not isinstance(fields.get("prompt"), str):
            return _error("image and prompt are required")
        return self._images(fields, fields["prompt"] + image["sha256"])

    def _images(self, body: dict[str, Any], seed_text: str) -> web.Response:
        try:
            width, height = (int(x) for x in str(body.get("size", "64x64")).split("x"))
            count = int(body.get("n", 1))
        except ValueError:
            return _error("size must be WIDTHxHEIGHT and n an integer")
        if not (0 < width <= 1024 and 0 < height <= 1024 and 0 < count <= 4):
            return _error("size up to 1024x1024, n from 1 to 4")
        digest = hashlib.sha256(seed_text.encode()).digest()
        data = []
        for index in range(count):
            image = png(width, height, (digest[index], digest[index + 8], digest[index + 16]))
            if body.get("response_format") == "url":
                data.append({"url": f"{self.origin}/files/{index}.png"})
            else:
                data.append({"b64_json": base64.b64encode(image).decode(),
                             "revised_prompt": seed_text[:64]})
        return web.json_response({"created": int(time.time()), "data": data,
                                  "usage": {"input_tokens": 4, "output_tokens": 0,
                                            "total_tokens": 4}})


def _error(message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error",
                                        "code": None}}, status=status)
