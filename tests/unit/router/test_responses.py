"""OpenAI Responses ⇄ OpenAI chat translation: requests, answers, streams and refusals."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from mushishi.services.router.responses import (
    ResponsesStreamTranslator,
    TranslationError,
    UpstreamStreamError,
    chat_to_response,
    dropped_reasoning,
    refused_field,
    responses_to_chat,
)

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def test_a_string_input_and_instructions_become_system_and_user_messages() -> None:
    chat = responses_to_chat({"model": "private", "input": "hello", "instructions": "Be brief.",
                              "max_output_tokens": 64, "temperature": 0.2, "top_p": 0.9})
    assert chat["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "hello"}]
    assert (chat["max_tokens"], chat["temperature"], chat["top_p"]) == (64, 0.2, 0.9)
    assert "stream" not in chat and "tools" not in chat


def test_message_items_with_text_and_image_parts_become_chat_parts() -> None:
    chat = responses_to_chat({"model": "p", "input": [
        {"role": "developer", "content": "Rules."},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "What is this?"},
            {"type": "input_image", "image_url": "data:image/png;base64,iVBO", "detail": "low"}]},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "A cat.", "annotations": []}]},
        {"role": "user", "content": [{"type": "input_text", "text": "Sure?"}]},
    ]})
    assert chat["messages"] == [
        {"role": "system", "content": "Rules."},
        {"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO",
                                                "detail": "low"}}]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "Sure?"}]


def test_function_calls_join_the_assistant_turn_and_outputs_become_tool_messages() -> None:
    body = {"model": "p", "input": [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "x"},
        {"type": "function_call", "call_id": "call_a", "name": "weather",
         "arguments": '{"city":"Paris"}'},
        {"type": "function_call", "call_id": "call_b", "name": "weather",
         "arguments": '{"city":"Rome"}'},
        {"type": "function_call_output", "call_id": "call_a", "output": "18 degrees"},
        {"type": "function_call_output", "call_id": "call_b",
         "output": [{"type": "input_text", "text": "21 degrees"}]},
    ], "tools": [
        {"type": "function", "name": "weather", "description": "Weather now",
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
         "strict": True},
        {"type": "web_search"}],
        "tool_choice": {"type": "function", "name": "weather"}, "parallel_tool_calls": False}
    chat = responses_to_chat(body)
    assert chat["messages"][1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_a", "type": "function",
         "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
        {"id": "call_b", "type": "function",
         "function": {"name": "weather", "arguments": '{"city":"Rome"}'}}]}
    assert chat["messages"][2:] == [
        {"role": "tool", "tool_call_id": "call_a", "content": "18 degrees"},
        {"role": "tool", "tool_call_id": "call_b", "content": "21 degrees"}]
    assert chat["tools"] == [{"type": "function", "function": {
        "name": "weather", "description": "Weather now", "strict": True,
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert chat["parallel_tool_calls"] is False
    assert dropped_reasoning(body) == 1


def test_text_format_json_schema_becomes_response_format_and_stream_asks_for_usage() -> None:
    chat = responses_to_chat({"model": "p", "input": "x", "stream": True, "text": {
        "format": {"type": "json_schema", "name": "answer", "strict": True,
                   "schema": {"type": "object"}}}})
    assert chat["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "answer", "schema": {"type": "object"}, "strict": True}}
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(("body", "field"), [
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"store": True}, "store"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"background": True}, "background"),
])
def test_requests_that_need_stored_state_are_refused_naming_the_field(
        body: dict[str, Any], field: str) -> None:
    refused = refused_field({"model": "p", "input": "x", **body})
    assert refused is not None and refused[0] == field


def test_stateless_requests_are_not_refused() -> None:
    assert refused_field({"model": "p", "input": "x", "store": False,
                          "previous_response_id": None}) is None


def test_codex_clis_request_shape_translates() -> None:
    """The body Codex CLI sends (`ResponsesApiRequest` in openai/codex's codex-api crate):
    string instructions, developer and user messages of input_text parts, encrypted reasoning
    items, function calls and their outputs, hosted tools (local_shell, web_search) beside
    function ones, `reasoning: null`, `store: false`, `include`, `prompt_cache_key` and
    `text.verbosity`. None of it is refused; what chat cannot carry is dropped."""
    body = {
        "model": "coder", "instructions": "You are Codex.",
        "input": [
            {"type": "message", "role": "developer",
             "content": [{"type": "input_text", "text": "<permissions>"}]},
            {"type": "message", "role": "user",
             "content": [{"type": "input_text", "text": "list files"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [], "content": None,
             "encrypted_content": "gAAAA"},
            {"type": "function_call", "name": "shell", "arguments": '{"command":["ls"]}',
             "call_id": "call_1"},
            {"type": "function_call_output", "call_id": "call_1", "output": "a.txt"},
            {"type": "message", "role": "assistant",
             "content": [{"type": "output_text", "text": "One file."}]},
        ],
        "tools": [{"type": "function", "name": "shell", "description": "Runs a command.",
                   "strict": False, "parameters": {"type": "object", "properties": {
                       "command": {"type": "array", "items": {"type": "string"}}}}},
                  {"type": "local_shell"}, {"type": "web_search"}],
        "tool_choice": "auto", "parallel_tool_calls": False, "reasoning": None,
        "store": False, "stream": True, "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "0f3c", "text": {"verbosity": "low"}}
    assert refused_field(body) is None
    chat = responses_to_chat(body)
    assert [m["role"] for m in chat["messages"]] == ["system", "system", "user", "assistant",
                                                     "tool", "assistant"]
    assert chat["messages"][1]["content"] == "<permissions>"
    assert chat["messages"][3]["tool_calls"][0]["function"]["name"] == "shell"
    assert [tool["function"]["name"] for tool in chat["tools"]] == ["shell"]
    assert chat["tool_choice"] == "auto" and chat["parallel_tool_calls"] is False
    assert "response_format" not in chat and chat["stream"] is True
    assert dropped_reasoning(body) == 1


@pytest.mark.parametrize(("item", "where"), [
    ({"type": "item_reference", "id": "msg_1"}, "input[0]"),
    ({"type": "web_search_call", "id": "ws_1"}, "input[0].type"),
    ({"role": "tool", "content": "x"}, "input[0].role"),
    ({"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]},
     "input[0].content[0].image_url"),
    ({"role": "user", "content": [{"type": "input_file", "file_id": "file_1"}]},
     "input[0].content[0]"),
    ({"type": "function_call", "name": "f"}, "input[0]"),
    ({"type": "function_call_output", "output": "x"}, "input[0].call_id"),
])
def test_untranslatable_items_are_errors_naming_their_path(item: dict[str, Any],
                                                          where: str) -> None:
    with pytest.raises(TranslationError, match=rf"^{__import__('re').escape(where)}"):
        responses_to_chat({"model": "p", "input": [item]})


def test_a_chat_answer_becomes_a_response_the_sdk_parses() -> None:
    request = {"model": "private", "input": "hi", "instructions": "Be brief.",
               "tools": [{"type": "function", "name": "weather", "parameters": {}}]}
    answer = chat_to_response({
        "id": "chatcmpl-1", "created": 1700000000, "choices": [{"index": 0, "message": {
            "role": "assistant", "content": "Checking.", "reasoning_content": "think",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {
                "name": "weather", "arguments": '{"city":"Paris"}'}}]},
            "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}},
        request, "private")
    response = Response.model_validate(answer)
    assert response.status == "completed" and response.model == "private"
    assert response.output_text == "Checking."
    kinds = [item.type for item in response.output]
    assert kinds == ["reasoning", "message", "function_call"]
    call = response.output[2]
    assert (call.call_id, call.name, call.arguments) == ("call_1", "weather",
                                                         '{"city":"Paris"}')
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens,
            response.usage.total_tokens) == (12, 5, 17)
    assert response.instructions == "Be brief." and response.created_at == 1700000000


def test_a_truncated_chat_answer_is_an_incomplete_response() -> None:
    answer = chat_to_response({"choices": [{"message": {"content": "abc"},
                                            "finish_reason": "length"}]},
                              {"input": "x"}, "p")
    assert answer["status"] == "incomplete"
    assert answer["incomplete_details"] == {"reason": "max_output_tokens"}


def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return b"data: " + json.dumps({"choices": [{"index": 0, "delta": delta,
                                                "finish_reason": finish}]}).encode() + b"\n\n"


def parse(stream: bytes) -> list[Any]:
    events = []
    for block in stream.decode().split("\n\n"):
        if not block.strip():
            continue
        name_line, data_line = block.split("\n")
        data = json.loads(data_line.removeprefix("data: "))
        assert name_line == f"event: {data['type']}"
        events.append(EVENTS.validate_python(data))
    return events


def test_a_chat_text_stream_becomes_responses_events_in_order() -> None:
    translator = ResponsesStreamTranslator({"input": "hi"}, "private")
    stream = b""
    pieces = [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}),
              chunk({"content": "lo"}), chunk({}, "stop"),
              b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n',
              b"data: [DONE]\n\n"]
    joined = b"".join(pieces)
    for start in range(0, len(joined), 7):  # arbitrary chunk boundaries
        stream += translator.feed(joined[start:start + 7])
    stream += translator.finish()
    events = parse(stream)
    assert [event.type for event in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Hello"
    done = events[-1].response
    assert done.output_text == "Hello" and done.status == "completed"
    assert done.usage is not None and (done.usage.input_tokens, done.usage.output_tokens) == (
        3, 2)
    item_ids = {e.item_id for e in events if hasattr(e, "item_id")}
    assert item_ids == {done.output[0].id}


def test_a_chat_tool_call_stream_becomes_function_call_argument_events() -> None:
    translator = ResponsesStreamTranslator({"input": "hi"}, "p")
    stream = translator.feed(b"".join([
        chunk({"content": "Let me see."}),
        chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                               "function": {"name": "weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_2", "type": "function",
                               "function": {"name": "time", "arguments": "{}"}}]}),
        chunk({}, "tool_calls"), b"data: [DONE]\n\n"]))
    events = parse(stream)
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert deltas == ['{"city": ', '"Paris"}', "{}"]
    done_args = [e.arguments for e in events
                 if e.type == "response.function_call_arguments.done"]
    assert done_args == ['{"city": "Paris"}', "{}"]
    final = events[-1].response
    assert [item.type for item in final.output] == ["message", "function_call",
                                                    "function_call"]
    assert (final.output[1].call_id, final.output[1].name) == ("call_1", "weather")
    added = [e for e in events if e.type == "response.output_item.added"]
    assert [e.output_index for e in added] == [0, 1, 2]


def test_an_error_event_mid_stream_raises_and_fail_ends_with_response_failed() -> None:
    translator = ResponsesStreamTranslator({"input": "hi"}, "p")
    started = translator.feed(chunk({"content": "a"}))
    with pytest.raises(UpstreamStreamError):
        translator.feed(b'data: {"error": {"message": "boom"}}\n\n')
    events = parse(started + translator.fail("backend gpu broke off", "backend_failed"))
    assert [e.type for e in events][-2:] == ["error", "response.failed"]
    assert events[-2].code == "backend_failed"
    assert events[-1].response.status == "failed"
    assert translator.finish() == b""


def test_a_stream_with_only_done_still_creates_and_completes_a_response() -> None:
    events = parse(ResponsesStreamTranslator({"input": "x"}, "p").feed(b"data: [DONE]\n\n"))
    assert [e.type for e in events] == ["response.created", "response.in_progress",
                                        "response.completed"]
