"""Both client APIs through the router to a real llama-server (the tiny model), streamed and
not: the router's relaying, its Anthropic translation and its token counting meet llama.cpp's
own wire format, not only the stand-ins'. The output is random bytes, so only the structure
is asserted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import anthropic
import httpx2 as httpx
import openai
import pytest

from tests.integration.router.harness import PERSONAL_KEY, Box, running_box, sha
from tests.llama import LlamaServer, running_llama


@pytest.fixture(scope="module")
def llama(llama_server_binary: Path, tiny_model: Path) -> Iterator[LlamaServer]:
    with running_llama(llama_server_binary, tiny_model, "gpu-model") as server:
        yield server


@pytest.fixture
async def real_box(tmp_path: Path, llama: LlamaServer) -> AsyncIterator[Box]:
    async with running_box(tmp_path, gpu_url=llama.url) as box:
        yield box


@pytest.mark.parametrize("stream", [False, True])
async def test_openai_chat_through_the_router_to_llama_server(real_box: Box,
                                                             stream: bool) -> None:
    api = openai.AsyncOpenAI(base_url=f"{real_box.base_url}/v1", api_key=PERSONAL_KEY,
                             max_retries=0)
    async with api:
        if stream:
            chunks = [c async for c in await api.chat.completions.create(
                model="private", max_tokens=8, stream=True,
                stream_options={"include_usage": True},
                messages=[{"role": "user", "content": "hello"}])]
            usage = chunks[-1].usage
            assert usage is not None and usage.completion_tokens > 0
            assert any(c.choices and c.choices[0].delta.content for c in chunks)
        else:
            raw = await api.chat.completions.with_raw_response.create(
                model="private", max_tokens=8, messages=[{"role": "user", "content": "hello"}])
            answer = raw.parse()
            assert raw.headers["x-mushishi-backend"] == "gpu"
            assert answer.choices[0].message.content
            assert answer.usage is not None and answer.usage.completion_tokens > 0
    assert not real_box.cpu.chat_requests()  # the real server answered, not the fallback


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_messages_translated_for_llama_server(real_box: Box,
                                                              stream: bool) -> None:
    api = anthropic.AsyncAnthropic(base_url=real_box.base_url, api_key=PERSONAL_KEY,
                                   max_retries=0)
    async with api:
        if stream:
            async with api.messages.stream(
                model="private", max_tokens=8, system="Answer briefly.",
                messages=[{"role": "user", "content": "hello"}],
            ) as events:
                text = "".join([delta async for delta in events.text_stream])
                message = await events.get_final_message()
            assert text == message.content[0].text
        else:
            message = await api.messages.create(
                model="private", max_tokens=8, system="Answer briefly.",
                messages=[{"role": "user", "content": "hello"}])
    assert message.model == "private"
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.output_tokens > 0 and message.usage.input_tokens > 0
    assert not real_box.cpu.chat_requests()  # the real server answered, not the fallback


@pytest.mark.parametrize("stream", [False, True])
async def test_openai_responses_translated_for_llama_server(real_box: Box,
                                                            stream: bool) -> None:
    api = openai.AsyncOpenAI(base_url=f"{real_box.base_url}/v1", api_key=PERSONAL_KEY,
                             max_retries=0)
    async with api:
        if stream:
            created = await api.responses.create(
                model="private", max_output_tokens=8, instructions="Answer briefly.",
                input="hello", stream=True)
            events = [event async for event in created]
            deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
            assert events[0].type == "response.created"
            assert events[-1].type in ("response.completed", "response.incomplete")
            response = events[-1].response
            assert deltas == response.output_text
        else:
            response = await api.responses.create(
                model="private", max_output_tokens=8, instructions="Answer briefly.",
                input=[{"role": "user", "content": [{"type": "input_text", "text": "hello"}]}])
    assert response.model == "private"
    assert response.output[0].type == "message" and response.output_text
    # 8 tokens of random bytes end on the length limit, or earlier on an end token.
    assert response.status in ("completed", "incomplete")
    assert response.usage is not None
    assert response.usage.output_tokens > 0 and response.usage.input_tokens > 0
    assert not real_box.cpu.chat_requests()  # the real server answered, not the fallback


async def test_embeddings_and_rerank_through_the_router_to_real_llama_servers(
        tmp_path: Path, llama_server_binary: Path, tiny_model: Path) -> None:
    """llama-server --embeddings and --reranking (DESIGN.md §9 endpoints): the SDK's
    embeddings.create and httpx's rerank, on both rerank paths, each to the server that
    declares the endpoint; the chat backend before them in the chain is skipped."""
    with running_llama(llama_server_binary, tiny_model, "embed-model", "--embeddings",
                       "--pooling", "mean") as embed, \
            running_llama(llama_server_binary, tiny_model, "rerank-model",
                          "--reranking") as rerank:
        extra = f"""
[backends.embed]
url = "{embed.url}"
model = "embed-model"
endpoints = ["embeddings"]

[backends.rerank]
url = "{rerank.url}"
model = "rerank-model"
endpoints = ["rerank"]

[profiles.search]
tier = "T1"
chain = ["cpu", "embed", "rerank"]
"""
        search_key = "sk-test-search"
        async with running_box(tmp_path, cpu_extra='endpoints = ["chat/completions"]',
                               extra=f'"{sha(search_key)}" = ["search"]\n' + extra) as box:
            api = openai.AsyncOpenAI(base_url=box.openai_base, api_key=search_key,
                                     max_retries=0)
            async with api:
                raw = await api.embeddings.with_raw_response.create(
                    model="search", input=["the lighthouse", "a harbour at night"])
                vectors = raw.parse()
                models = {m.id: m for m in (await api.models.list()).data}
            assert raw.headers["x-mushishi-backend"] == "embed"
            assert [item.index for item in vectors.data] == [0, 1]
            assert len(vectors.data[0].embedding) == 64  # the tiny model's width
            assert vectors.usage.prompt_tokens > 0
            assert models["search"].endpoints == [  # type: ignore[attr-defined]
                "chat/completions", "embeddings", "rerank", "responses"]  # chat translated
            async with httpx.AsyncClient(base_url=box.base_url, headers={
                    "Authorization": f"Bearer {search_key}"}) as client:
                for path in ("/v1/rerank", "/rerank"):
                    response = await client.post(path, json={
                        "model": "search", "query": "lighthouse", "top_n": 2,
                        "documents": ["a lighthouse", "a cat", "the sea"]})
                    assert response.status_code == 200, response.text
                    assert response.headers["x-mushishi-backend"] == "rerank"
                    results = response.json()["results"]
                    assert len(results) == 2
                    assert {r["index"] for r in results} <= {0, 1, 2}
                    assert all(isinstance(r["relevance_score"], float) for r in results)
            assert box.cpu.chat_requests() == []  # the chat-only hop was never asked


async def test_a_connection_llama_server_closes_after_a_stream_is_not_reused(
    real_box: Box,
) -> None:
    # llama-server closes its connection after every streamed answer although it advertises
    # keep-alive: a request sent on that connection before the close is seen failed before
    # its first byte (then retried, X-Mushishi-Retries): 12 of 450 requests in 5 runs before
    # the pool learned not to keep such connections, 0 of 450 after.
    headers = {"Authorization": f"Bearer {PERSONAL_KEY}"}
    retried = statuses = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal retried, statuses
        for turn in range(15):
            async with session.post(real_box.base_url + "/v1/chat/completions",
                                    headers=headers, json={
                                        "model": "private", "max_tokens": 2,
                                        "stream": turn % 2 == 0,
                                        "messages": [{"role": "user", "content": "hi"}]},
                                    ) as response:
                await response.read()
                statuses += response.status == 200
                retried += int(response.headers.get("X-Mushishi-Retries", "0"))

    await real_box.cpu.refuse()  # private's requests wait for llama-server's slots
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(session) for _ in range(6)))
    assert statuses == 90
    assert retried == 0
