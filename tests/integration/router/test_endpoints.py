"""Endpoints per backend (DESIGN.md §9): a request walks its profile's chain skipping, with no
round trip, every backend that does not serve its endpoint, and a profile with none answers
404 endpoint_unsupported naming the profile."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from tests.integration.router.harness import PERSONAL_KEY, Box, running_box, sha
from tests.standins.openai_server import Fault

STRICT_KEY = "sk-test-strictpair"
# The CPU floor serves chat only; the GPU backend keeps the default (chat, completions,
# embeddings).
CPU_CHAT_ONLY = 'endpoints = ["chat/completions"]'


async def post(box: Box, path: str, body: dict[str, object], *, key: str = PERSONAL_KEY
               ) -> tuple[int, dict[str, str], dict]:
    async with aiohttp.ClientSession() as session, session.post(
        box.base_url + path, json=body, headers={"Authorization": f"Bearer {key}"},
    ) as response:
        return response.status, dict(response.headers), json.loads(await response.read())


async def test_a_profile_with_no_hop_for_the_endpoint_answers_404_naming_it(
        tmp_path: Path) -> None:
    async with running_box(tmp_path, cpu_extra=CPU_CHAT_ONLY) as box:
        status, headers, body = await post(box, "/v1/embeddings",
                                           {"model": "strictcpu", "input": "x"})
        assert status == 404, body
        error = body["error"]
        assert error["code"] == "endpoint_unsupported"
        assert "'strictcpu'" in error["message"] and "/v1/embeddings" in error["message"]
        assert "chat/completions" in error["message"]  # what it does serve
        assert headers["X-Mushishi-Profile"] == "strictcpu"
        assert headers["X-Mushishi-Tier"] == "T1-strict"
        assert headers["X-Mushishi-Backend"] == "none"
        assert box.cpu.chat_requests() == []  # no round trip


async def test_hops_that_do_not_serve_the_endpoint_are_skipped_without_a_round_trip(
        tmp_path: Path) -> None:
    async with running_box(tmp_path, cpu_extra=CPU_CHAT_ONLY) as box:
        # T1 private = [gpu, cpu]: the GPU backend fails, and the CPU floor, which serves
        # chat only, is never asked for an embedding.
        box.gpu.fail_next(Fault.status_code(500))
        status, headers, body = await post(box, "/v1/embeddings",
                                           {"model": "private", "input": "x"})
        assert status == 502, body
        assert body["error"]["code"] == "all_backends_failed"
        assert "cpu" not in body["error"]["message"]
        assert headers["X-Mushishi-Profile"] == "private"
        assert box.cpu.chat_requests() == []
        # Chat still walks the whole chain: the GPU fails, the CPU floor answers.
        box.gpu.fail_next(Fault.status_code(500))
        status, headers, body = await post(box, "/v1/chat/completions", {
            "model": "private", "messages": [{"role": "user", "content": "hi"}]})
        assert status == 200, body
        assert headers["X-Mushishi-Backend"] == "cpu"
        assert headers["X-Mushishi-Fallbacks"] == "1"


async def test_a_t1_strict_chain_skips_a_hop_that_does_not_serve_the_endpoint(
        tmp_path: Path) -> None:
    # T1-strict never falls back, but a hop that does not serve an endpoint is not part of
    # that endpoint's chain: the next hop that does serve it answers, as the only one.
    extra = f"""
"{sha(STRICT_KEY)}" = ["strictpair"]

[profiles.strictpair]
tier = "T1-strict"
chain = ["cpu", "gpu"]
"""
    async with running_box(tmp_path, cpu_extra=CPU_CHAT_ONLY, extra=extra) as box:
        status, headers, body = await post(box, "/v1/embeddings",
                                           {"model": "strictpair", "input": "x"},
                                           key=STRICT_KEY)
        assert status == 200, body
        assert headers["X-Mushishi-Backend"] == "gpu"
        assert "X-Mushishi-Fallbacks" not in headers
        assert box.cpu.chat_requests() == []
        assert [r.path for r in box.gpu.chat_requests()] == ["/v1/embeddings"]


async def test_a_pin_that_keeps_only_hops_without_the_endpoint_names_the_pin(
        tmp_path: Path) -> None:
    async with running_box(tmp_path, cpu_extra=CPU_CHAT_ONLY) as box:
        status, _, body = await post(box, "/v1/completions",
                                     {"model": "private/cpu", "prompt": "x"})
        assert status == 404, body
        assert body["error"]["code"] == "endpoint_unsupported"
        assert "pinned part of the chain of profile 'private'" in body["error"]["message"]
        status, headers, body = await post(box, "/v1/completions",
                                           {"model": "private", "prompt": "x"})
        assert status == 200, body
        assert headers["X-Mushishi-Backend"] == "gpu"
