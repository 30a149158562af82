"""The official anthropic SDK against the router's /v1/messages (translated to OpenAI chat for
the backend): text, system prompt, tools, streaming, count_tokens and errors."""

from __future__ import annotations

import anthropic
import pytest

from tests.integration.router.harness import PERSONAL_KEY, Box


def client(box: Box, key: str = PERSONAL_KEY) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=box.base_url, api_key=key, max_retries=0)


async def test_message_with_system_prompt_is_answered_by_the_profile_chain(box: Box) -> None:
    async with client(box) as api:
        raw = await api.messages.with_raw_response.create(
            model="private", max_tokens=64, system="Answer briefly.",
            messages=[{"role": "user", "content": "hello"}])
        message = await raw.parse()
    assert message.content[0].type == "text"
    assert message.content[0].text == " ".join(f"gpu-{i}" for i in range(8))
    assert message.model == "private" and message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 8
    assert raw.headers["x-mushishi-backend"] == "gpu"
    sent = box.gpu.chat_requests()[-1].body
    assert sent["messages"][0] == {"role": "system", "content": "Answer briefly."}
    assert sent["max_tokens"] == 64 and sent["model"] == "gpu-model"


async def test_streamed_message_yields_text_deltas_and_final_usage(box: Box) -> None:
    async with client(box) as api, api.messages.stream(
        model="private", max_tokens=64, messages=[{"role": "user", "content": "hello"}],
    ) as stream:
        text = "".join([delta async for delta in stream.text_stream])
        final = await stream.get_final_message()
    assert text == " ".join(f"gpu-{i}" for i in range(8))
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 8


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_use_round_trips_through_openai_tool_calls(box: Box, stream: bool) -> None:
    tools = [{"name": "weather", "description": "Weather now", "input_schema": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    async with client(box) as api:
        if stream:
            async with api.messages.stream(
                model="private", max_tokens=64, tools=tools,
                messages=[{"role": "user", "content": "Weather in Paris?"}],
            ) as events:
                message = await events.get_final_message()
        else:
            message = await api.messages.create(
                model="private", max_tokens=64, tools=tools,
                messages=[{"role": "user", "content": "Weather in Paris?"}])
        tool_use = next(block for block in message.content if block.type == "tool_use")
        assert (tool_use.name, tool_use.input) == ("weather", {"city": "Paris"})
        assert message.stop_reason == "tool_use"
        follow_up = await api.messages.create(
            model="private", max_tokens=64, tools=tools, messages=[
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": message.content},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id,
                                              "content": "18 degrees"}]}])
    assert follow_up.content
    history = box.gpu.chat_requests()[-1].body["messages"]
    assert history[1]["tool_calls"][0]["id"] == tool_use.id
    assert history[2] == {"role": "tool", "tool_call_id": tool_use.id, "content": "18 degrees"}


async def test_count_tokens_answers_locally_without_touching_a_backend(box: Box) -> None:
    before = len(box.gpu.chat_requests())
    async with client(box) as api:
        counted = await api.messages.count_tokens(
            model="private", system="x" * 400, messages=[{"role": "user", "content": "hi"}])
    assert counted.input_tokens >= 100
    assert len(box.gpu.chat_requests()) == before


async def test_errors_are_anthropic_exceptions_carrying_the_stable_code(box: Box) -> None:
    async with client(box, "sk-wrong") as api:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await api.messages.create(model="private", max_tokens=5,
                                      messages=[{"role": "user", "content": "x"}])
    assert caught.value.body["error"]["code"] == "invalid_api_key"
    async with client(box) as api:
        with pytest.raises(anthropic.NotFoundError) as unknown:
            await api.messages.create(model="not-a-profile", max_tokens=5,
                                      messages=[{"role": "user", "content": "x"}])
    assert unknown.value.body["error"]["code"] == "unknown_profile"
