"""Anthropic Messages ⇄ OpenAI chat translation: requests, answers and streams."""

from __future__ import annotations

import json

import pytest

from mushishi.services.router.anthropic import (
    StreamTranslator,
    TranslationError,
    chat_to_message,
    estimate_tokens,
    messages_to_chat,
)


def test_system_text_images_and_parameters_become_chat_messages() -> None:
    chat = messages_to_chat({
        "model": "private", "max_tokens": 64, "temperature": 0.2, "top_k": 5,
        "stop_sequences": ["END"], "system": [{"type": "text", "text": "Be brief."}],
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "iVBORw0KGgo="}}]}],
    })
    assert chat["messages"][0] == {"role": "system", "content": "Be brief."}
    assert chat["messages"][1]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]
    assert (chat["max_tokens"], chat["temperature"], chat["top_k"], chat["stop"]) == (
        64, 0.2, 5, ["END"])
    assert "stream" not in chat


def test_tool_use_and_tool_result_round_trip_into_openai_tool_calls() -> None:
    chat = messages_to_chat({
        "model": "p", "max_tokens": 10,
        "tools": [{"name": "weather", "description": "Weather now",
                   "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
                  {"type": "web_search_20250305", "name": "web_search"}],
        "tool_choice": {"type": "tool", "name": "weather", "disable_parallel_tool_use": True},
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "x"},
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather",
                 "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1",
                 "content": [{"type": "text", "text": "18°C"}]},
                {"type": "text", "text": "Thanks"}]},
        ]})
    assert chat["tools"] == [{"type": "function", "function": {
        "name": "weather", "description": "Weather now",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert chat["parallel_tool_calls"] is False
    assistant = chat["messages"][1]
    assert assistant["content"] == "Let me check."
    assert assistant["tool_calls"][0]["function"] == {"name": "weather",
                                                      "arguments": '{"city": "Paris"}'}
    assert chat["messages"][2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "18°C"}
    assert chat["messages"][3] == {"role": "user", "content": "Thanks"}


def test_streaming_asks_the_backend_for_usage() -> None:
    chat = messages_to_chat({"model": "p", "max_tokens": 5, "stream": True,
                             "messages": [{"role": "user", "content": "hi"}]})
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("message", [
    {"role": "system", "content": "x"},
    {"role": "user", "content": 5},
    {"role": "user", "content": [{"type": "audio"}]},
    {"role": "user", "content": [{"type": "image", "source": {"type": "file"}}]},
    {"role": "assistant", "content": [{"type": "tool_use", "id": 1}]},
])
def test_untranslatable_messages_name_the_field(message: dict) -> None:
    with pytest.raises(TranslationError, match=r"messages\[0\]"):
        messages_to_chat({"model": "p", "max_tokens": 5, "messages": [message]})


@pytest.mark.parametrize(("finish", "stop_reason"), [
    ("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"),
])
def test_chat_completion_becomes_a_message(finish: str, stop_reason: str) -> None:
    message = chat_to_message({
        "choices": [{"message": {"content": "Hello", "tool_calls": [{
            "id": "call_1", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}]},
            "finish_reason": finish}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 3}}, "private")
    assert message["model"] == "private" and message["role"] == "assistant"
    assert message["content"] == [
        {"type": "text", "text": "Hello"},
        {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Oslo"}}]
    assert message["stop_reason"] == stop_reason
    assert message["usage"] == {"input_tokens": 11, "output_tokens": 3}


def test_vllm_stop_reason_string_becomes_stop_sequence() -> None:
    message = chat_to_message({"choices": [{"message": {"content": "x"}, "finish_reason": "stop",
                                            "stop_reason": "END"}]}, "p")
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "END")


def sse(*chunks: dict) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + \
        b"data: [DONE]\n\n"


def events(raw: bytes) -> list[tuple[str, dict]]:
    out = []
    for block in raw.decode().strip().split("\n\n"):
        name_line, data_line = block.split("\n")
        out.append((name_line.removeprefix("event: "), json.loads(data_line[6:])))
    return out


def test_stream_translator_emits_the_anthropic_event_sequence_in_any_byte_split() -> None:
    upstream = sse(
        {"choices": [{"delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"delta": {"content": "Hel"}}]},
        {"choices": [{"delta": {"content": "lo"}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "call_9", "function": {
            "name": "weather", "arguments": ""}}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {
            "arguments": '{"city":'}}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {
            "arguments": '"Oslo"}'}}]}}]},
        {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 4}},
    ) + b": keep-alive comment\n\n"
    for split in (1, 7, 64, len(upstream)):
        translator = StreamTranslator("private")
        out = b"".join(translator.feed(upstream[i:i + split])
                       for i in range(0, len(upstream), split))
        out += translator.finish()
        names = [name for name, _ in events(out)]
        assert names == ["message_start", "ping", "content_block_start", "content_block_delta",
                         "content_block_delta", "content_block_stop", "content_block_start",
                         "content_block_delta", "content_block_delta", "content_block_stop",
                         "message_delta", "message_stop"], split
        parsed = events(out)
        assert parsed[6][1]["content_block"] == {"type": "tool_use", "id": "call_9",
                                                 "name": "weather", "input": {}}
        assert parsed[10][1]["delta"]["stop_reason"] == "tool_use"
        assert parsed[10][1]["usage"]["output_tokens"] == 4


def test_estimate_tokens_grows_with_the_request() -> None:
    small = estimate_tokens({"messages": [{"role": "user", "content": "hi"}]})
    large = estimate_tokens({"system": "x" * 4000,
                             "messages": [{"role": "user", "content": "hi"}]})
    assert 1 <= small < large and large >= 1000
