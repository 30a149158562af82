"""T1 media policy: a T1 or T1-strict request may not make the model server fetch media from
elsewhere (issue 13, item 7). Remote references are refused with `400 remote_media_refused`
naming the JSON path; `data:` URIs and the profile's local prefixes pass; T2/T3 unchecked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from tests.integration.router.harness import PERSONAL_KEY, Box, running_box

REMOTE = "https://203.0.113.7/pixel.png?leak=private-notes"
INLINE = "data:image/png;base64,iVBORw0KGgo="
LOCAL = "http://127.0.0.1:8090/media/scan.png"


def image_chat(model: str, url: str) -> dict[str, Any]:
    return {"model": model, "messages": [
        {"role": "system", "content": "describe"},
        {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                     {"type": "image_url", "image_url": {"url": url}}]}]}


async def post(box: Box, path: str, body: dict[str, Any]) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session, session.post(
            box.base_url + path, json=body, headers={"Authorization": f"Bearer {PERSONAL_KEY}",
                                                     "x-api-key": PERSONAL_KEY}) as response:
        return response.status, json.loads(await response.read())


def backends_saw(box: Box, needle: str) -> bool:
    return any(needle in json.dumps(r.body) for server in (box.gpu, box.cpu, box.egress)
               for r in server.chat_requests())


async def test_a_t1_request_with_a_remote_image_is_refused_naming_the_path(
        tmp_path: Path) -> None:
    async with running_box(tmp_path) as box:
        for profile in ("private", "strictcpu"):
            status, body = await post(box, "/v1/chat/completions", image_chat(profile, REMOTE))
            assert status == 400, body
            assert body["error"]["code"] == "remote_media_refused"
            assert body["error"]["param"] == "messages[1].content[1].image_url.url"
            assert REMOTE not in body["error"]["message"]
        assert not backends_saw(box, "203.0.113.7")


async def test_inline_media_passes_and_t2_is_not_checked(tmp_path: Path) -> None:
    async with running_box(tmp_path) as box:
        status, body = await post(box, "/v1/chat/completions", image_chat("private", INLINE))
        assert status == 200, body
        status, body = await post(box, "/v1/chat/completions", image_chat("personal", REMOTE))
        assert status == 200, body


async def test_a_profiles_local_media_prefix_passes(tmp_path: Path) -> None:
    extra = 'queue_timeout_s = 1\nlocal_media_prefixes = ["http://127.0.0.1:8090/media/"]'
    async with running_box(tmp_path, private_extra=extra) as box:
        status, body = await post(box, "/v1/chat/completions", image_chat("private", LOCAL))
        assert status == 200, body
        status, body = await post(box, "/v1/chat/completions", image_chat(
            "private", "http://127.0.0.1:8090/elsewhere/scan.png"))
        assert status == 400 and body["error"]["code"] == "remote_media_refused", body


async def test_an_anthropic_url_image_in_a_t1_request_is_refused(tmp_path: Path) -> None:
    async with running_box(tmp_path) as box:
        status, body = await post(box, "/v1/messages", {
            "model": "private", "max_tokens": 16, "messages": [{"role": "user", "content": [
                {"type": "text", "text": "look"},
                {"type": "image", "source": {"type": "url", "url": REMOTE}}]}]})
        assert status == 400, body
        assert body["type"] == "error" and body["error"]["code"] == "remote_media_refused"
        assert body["error"]["param"] == "messages[0].content[1].source.url"
        assert not backends_saw(box, "203.0.113.7")
