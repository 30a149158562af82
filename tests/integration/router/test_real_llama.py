"""Both client APIs through the router to a real llama-server (the tiny model), streamed and
not: the router's relaying, its Anthropic translation and its token counting meet llama.cpp's
own wire format, not only the stand-ins'. The output is random bytes, so only the structure
is asserted."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anthropic
import openai
import pytest

from tests.integration.router.harness import PERSONAL_KEY, Box, running_box
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
