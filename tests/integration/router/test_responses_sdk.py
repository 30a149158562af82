"""The official openai SDK's `responses.create` against the router's /v1/responses: translated
to chat for chat backends (text, instructions, tools and their outputs, streaming as
Responses events), passed through as is to a backend that serves `responses`, stateless
(previous_response_id and store refused naming the field), and the T1 media rule applied to
input_image URLs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from tests.integration.router.harness import PERSONAL_KEY, Box, running_box
from tests.standins.openai_server import Fault

WORDS = " ".join(f"gpu-{i}" for i in range(8))
TOOLS: list[Any] = [{"type": "function", "name": "weather", "description": "Weather now",
                     "parameters": {"type": "object", "properties": {
                         "city": {"type": "string"}}, "required": ["city"]},
                     "strict": True}]


def client(box: Box) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=box.openai_base, api_key=PERSONAL_KEY, max_retries=0)


async def test_a_response_is_answered_by_a_chat_backend_through_translation(box: Box) -> None:
    async with client(box) as api:
        raw = await api.responses.with_raw_response.create(
            model="private", instructions="Answer briefly.", input="hello",
            max_output_tokens=64)
        response = raw.parse()
    assert response.object == "response" and response.status == "completed"
    assert response.output_text == WORDS
    assert response.model == "private" and response.instructions == "Answer briefly."
    assert response.usage is not None and response.usage.output_tokens == 8
    assert response.usage.input_tokens > 0
    assert raw.headers["x-mushishi-backend"] == "gpu"
    assert raw.headers["x-mushishi-tier"] == "T1"
    sent = box.gpu.chat_requests()[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.body["messages"] == [{"role": "system", "content": "Answer briefly."},
                                     {"role": "user", "content": "hello"}]
    assert sent.body["max_tokens"] == 64 and sent.body["model"] == "gpu-model"


async def test_a_streamed_response_arrives_as_responses_events(box: Box) -> None:
    async with client(box) as api:
        stream = await api.responses.create(model="private", input="hello", stream=True)
        events = [event async for event in stream]
    types = [event.type for event in events]
    assert types[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == WORDS
    final = events[-1].response
    assert final.output_text == WORDS and final.usage is not None
    assert final.usage.output_tokens == 8
    assert [e.sequence_number for e in events] == list(range(len(events)))


async def test_the_sdk_stream_helper_accumulates_the_final_response(box: Box) -> None:
    async with client(box) as api, api.responses.stream(model="private",
                                                        input="hello") as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_response()
    assert final.output_text == WORDS and final.status == "completed"


@pytest.mark.parametrize("stream", [False, True])
async def test_function_calls_round_trip_through_chat_tool_calls(box: Box,
                                                                 stream: bool) -> None:
    question = [{"role": "user", "content": "Weather in Paris?"}]
    async with client(box) as api:
        if stream:
            async with api.responses.stream(model="private", input=question,
                                            tools=TOOLS) as events:
                deltas = [e.delta async for e in events
                          if e.type == "response.function_call_arguments.delta"]
                response = await events.get_final_response()
            assert "".join(deltas) == '{"city": "Paris"}'
        else:
            response = await api.responses.create(model="private", input=question, tools=TOOLS)
        call = next(item for item in response.output if item.type == "function_call")
        assert (call.name, call.arguments) == ("weather", '{"city": "Paris"}')
        sent_tools = box.gpu.chat_requests()[-1].body["tools"]
        assert sent_tools[0]["function"]["name"] == "weather"
        follow_up = await api.responses.create(
            model="private", tools=TOOLS, tool_choice="none", input=[
                *question,
                {"type": "function_call", "call_id": call.call_id, "name": call.name,
                 "arguments": call.arguments},
                {"type": "function_call_output", "call_id": call.call_id,
                 "output": "18 degrees"}])
    assert follow_up.output_text == WORDS
    history = box.gpu.chat_requests()[-1].body["messages"]
    assert history[1]["tool_calls"][0]["id"] == call.call_id
    assert history[2] == {"role": "tool", "tool_call_id": call.call_id,
                          "content": "18 degrees"}


@pytest.mark.parametrize(("extra", "field"), [
    ({"previous_response_id": "resp_earlier"}, "previous_response_id"),
    ({"store": True}, "store"),
])
async def test_requests_needing_stored_state_are_refused_naming_the_field(
        box: Box, extra: dict[str, Any], field: str) -> None:
    async with client(box) as api:
        with pytest.raises(openai.BadRequestError) as caught:
            await api.responses.create(model="private", input="hello", **extra)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == "invalid_request" and error["param"] == field
    assert field in error["message"]
    assert box.gpu.chat_requests() == []


async def test_t1_refuses_a_remote_input_image_and_t2_sends_it(box: Box) -> None:
    image = [{"role": "user", "content": [
        {"type": "input_text", "text": "What is this?"},
        {"type": "input_image", "image_url": "https://203.0.113.7/cat.png", "detail": "auto"}]}]
    async with client(box) as api:
        with pytest.raises(openai.BadRequestError) as caught:
            await api.responses.create(model="private", input=image)
        error = caught.value.body
        assert isinstance(error, dict)
        assert error["code"] == "remote_media_refused"
        assert error["param"] == "input[0].content[1].image_url"
        assert "203.0.113.7" not in error["message"]
        assert box.gpu.chat_requests() == []
        await api.responses.create(model="personal", input=image)  # T2: no such rule
    part = box.gpu.chat_requests()[-1].body["messages"][0]["content"][1]
    assert part == {"type": "image_url", "image_url": {"url": "https://203.0.113.7/cat.png",
                                                       "detail": "auto"}}


async def test_untranslatable_input_is_a_400_naming_the_item(box: Box) -> None:
    async with client(box) as api:
        with pytest.raises(openai.BadRequestError) as caught:
            await api.responses.create(model="private", input=[
                {"type": "item_reference", "id": "msg_earlier"}])
    error = caught.value.body
    assert isinstance(error, dict) and error["message"].startswith("input[0]")


@pytest.mark.parametrize("stream", [False, True])
async def test_a_backend_serving_responses_gets_the_request_as_is(tmp_path: Path,
                                                                  stream: bool) -> None:
    async with running_box(tmp_path, gpu_extra='endpoints = ["chat/completions", '
                                                '"responses"]') as box:
        async with client(box) as api:
            if stream:
                created = await api.responses.create(model="private", input="hello",
                                                     instructions="Be brief.", stream=True)
                events = [event async for event in created]
                response = events[-1].response
                assert events[0].type == "response.created"
            else:
                response = await api.responses.create(model="private", input="hello",
                                                      instructions="Be brief.")
        assert response.output_text == WORDS
        sent = box.gpu.chat_requests()[-1]
        assert sent.path == "/v1/responses"
        assert sent.body["input"] == "hello" and sent.body["instructions"] == "Be brief."
        assert sent.body["model"] == "gpu-model" and "messages" not in sent.body


async def test_a_chain_translates_only_for_the_hops_that_need_it(tmp_path: Path) -> None:
    async with running_box(tmp_path, gpu_extra='endpoints = ["chat/completions", '
                                                '"responses"]') as box:
        box.gpu.fail_next(Fault.status_code(503))
        async with client(box) as api:
            raw = await api.responses.with_raw_response.create(model="private", input="hello")
            response = raw.parse()
        assert raw.headers["x-mushishi-backend"] == "cpu"
        assert response.output_text == " ".join(f"cpu-{i}" for i in range(8))
        assert box.gpu.chat_requests()[-1].path == "/v1/responses"
        assert box.cpu.chat_requests()[-1].path == "/v1/chat/completions"
        assert box.cpu.chat_requests()[-1].body["messages"] == [
            {"role": "user", "content": "hello"}]


async def test_a_stream_broken_after_its_first_byte_ends_with_response_failed(
        box: Box) -> None:
    box.gpu.fail_next(Fault.die_mid_stream(after_chunks=3))
    async with client(box) as api:
        stream = await api.responses.create(model="private", input="hello", stream=True)
        events = [event async for event in stream]
    types = [event.type for event in events]
    assert types[0] == "response.created" and "response.output_text.delta" in types
    assert types[-2:] == ["error", "response.failed"]
    assert "response.completed" not in types
    assert events[-2].code == "backend_failed"
    failed = events[-1].response
    assert failed.status == "failed" and failed.error is not None
    assert box.cpu.chat_requests() == []  # no fallback once the caller has the first byte


async def test_a_cloud_hop_gets_the_chat_translation_through_the_egress(
        tmp_path: Path) -> None:
    async with running_box(tmp_path, real_egress=True) as box:
        async with client(box) as api:
            raw = await api.responses.with_raw_response.create(
                model="cloudy", input="hello", instructions="Be brief.", stream=False)
            response = raw.parse()
        assert raw.headers["x-mushishi-backend"] == "kimi"
        assert response.output_text == " ".join(f"kimi-{i}" for i in range(8))
        [sent] = box.cloud["kimi"].chat_requests()
        assert sent.path == "/v1/chat/completions"
        assert sent.body["messages"][0] == {"role": "system", "content": "Be brief."}
        assert box.egress_daemon is not None
        assert box.egress_daemon.ledger.totals("kimi").requests == 1
