"""Anthropic Messages ⇄ OpenAI chat, for OpenAI-compatible backends (pure, no I/O).

Covers what Claude-Code-style clients send: text, system prompts, images, tools (tool_use /
tool_result), stop sequences and streaming. Thinking blocks in the history are dropped
(OpenAI-compatible backends cannot take them back).
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from typing import Any

from mushishi.services.router.chat_stream import (
    ChatStreamTranslator,
    TranslationError,
    UpstreamStreamError,
    chat_request,
    first_choice,
    text_or_list,
    usage_counts,
)

__all__ = ["StreamTranslator", "TranslationError", "UpstreamStreamError", "chat_to_message",
           "estimate_tokens", "messages_to_chat"]

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

# Anthropic error `type` for each HTTP status the router answers with.
def _blocks(content: list[Any], where: str) -> Iterator[tuple[str, dict[str, Any], Any]]:
    """Each content block as (where it is, for errors; the block; its type), thinking blocks
    left out; a block that is not an object is an error."""
    for index, block in enumerate(content):
        here = f"{where}[{index}]"
        if not isinstance(block, dict):
            raise TranslationError(f"{here} must be an object")
        kind = block.get("type")
        if kind not in ("thinking", "redacted_thinking"):
            yield here, block, kind


def _text_of(content: Any, where: str) -> str:
    content = text_or_list(content, where, "content blocks")
    if isinstance(content, str):
        return content
    texts = []
    for here, block, kind in _blocks(content, where):
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise TranslationError(f"{here}.text must be a string")
            texts.append(block["text"])
        elif kind in ("image", "document"):
            texts.append(f"[{kind} omitted]")
    return "\n\n".join(texts)


def _image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise TranslationError(f"{where}.source must be an object")
    if source.get("type") == "base64":
        media, data = source.get("media_type"), source.get("data")
        if not isinstance(media, str) or not isinstance(data, str):
            raise TranslationError(f"{where}.source needs media_type and data strings")
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise TranslationError(f"{where}.source.type must be base64 or url")


def _user_blocks(content: list[Any], where: str) -> list[dict[str, Any]]:
    """A user turn: tool results become `tool` messages (first), the rest one user message."""
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for here, block, kind in _blocks(content, where):
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise TranslationError(f"{here}.text must be a string")
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image":
            parts.append(_image_part(block, here))
        elif kind == "tool_result":
            if not isinstance(block.get("tool_use_id"), str):
                raise TranslationError(f"{here}.tool_use_id must be a string")
            text = _text_of(block.get("content", ""), f"{here}.content")
            if block.get("is_error"):
                text = f"Error: {text}"
            tool_messages.append(
                {"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})
        elif kind == "document":
            parts.append({"type": "text", "text": _text_of([block], here)})
        else:
            raise TranslationError(f"{here}.type {kind!r} is not supported")
    messages = list(tool_messages)
    if parts:
        if all(part["type"] == "text" for part in parts):
            messages.append({"role": "user", "content": "\n\n".join(p["text"] for p in parts)})
        else:
            messages.append({"role": "user", "content": parts})
    return messages


def _assistant_blocks(content: list[Any], where: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for here, block, kind in _blocks(content, where):
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise TranslationError(f"{here} needs id and name strings")
            calls.append({"id": block["id"], "type": "function", "function": {
                "name": block["name"], "arguments": json.dumps(block.get("input", {}))}})
        else:
            raise TranslationError(f"{here}.type {kind!r} is not supported in assistant turns")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _tool_choice(choice: Any) -> Any:
    if not isinstance(choice, dict):
        raise TranslationError("tool_choice must be an object")
    kind = choice.get("type")
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise TranslationError("tool_choice.type must be auto, any, none or tool (with a name)")


def messages_to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages request as an OpenAI chat completions request (model untouched)."""
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _text_of(system, "system")})
    for index, message in enumerate(body["messages"]):
        where = f"messages[{index}]"
        role, content = message.get("role"), message.get("content")
        if role not in ("user", "assistant"):
            raise TranslationError(f"{where}.role must be user or assistant")
        if isinstance(content, str):
            messages.append({"role": role, "content": content})
        elif isinstance(content, list):
            if role == "user":
                messages += _user_blocks(content, f"{where}.content")
            else:
                messages.append(_assistant_blocks(content, f"{where}.content"))
        else:
            raise TranslationError(f"{where}.content must be a string or a list of blocks")
    chat: dict[str, Any] = {"model": body["model"], "messages": messages,
                            "max_tokens": body["max_tokens"]}
    for name in ("temperature", "top_p", "top_k"):
        if name in body:
            chat[name] = body[name]
    if "stop_sequences" in body:
        chat["stop"] = body["stop_sequences"]
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise TranslationError("tools must be a list")
        converted = []
        for index, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                raise TranslationError(f"tools[{index}] needs a name")
            if "input_schema" not in tool:
                continue  # server tools (web_search, …) have no local equivalent
            converted.append({"type": "function", "function": {
                "name": tool["name"], "description": tool.get("description", ""),
                "parameters": tool["input_schema"]}})
        if converted:
            chat["tools"] = converted
    if "tool_choice" in body and "tools" in chat:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
        if body["tool_choice"].get("disable_parallel_tool_use"):
            chat["parallel_tool_calls"] = False
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        chat["user"] = metadata["user_id"]
    return chat_request(chat, bool(body.get("stream")))


def _tool_input(arguments: str) -> Any:
    try:
        return json.loads(arguments) if arguments else {}
    except json.JSONDecodeError:
        return {"_unparsed_arguments": arguments}


def new_message_id() -> str:
    """A fresh Anthropic-style message id."""
    return "msg_" + uuid.uuid4().hex[:24]


def chat_to_message(response: dict[str, Any], model: str) -> dict[str, Any]:
    """An OpenAI chat completion as an Anthropic message; `model` is what the client asked."""
    choice, message = first_choice(response)
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or f"toolu_{uuid.uuid4().hex}",
                        "name": function.get("name", ""),
                        "input": _tool_input(function.get("arguments", ""))})
    finish = choice.get("finish_reason")
    stop_reason = _STOP_REASONS.get(finish or "stop", "end_turn")
    stop_sequence = None
    if finish == "stop" and isinstance(choice.get("stop_reason"), str):
        stop_reason, stop_sequence = "stop_sequence", choice["stop_reason"]  # vLLM tells which
    prompt, completion = usage_counts(response.get("usage") or {})
    return {
        "id": new_message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {"input_tokens": prompt, "output_tokens": completion},
    }


def sse_event(name: str, data: dict[str, Any]) -> bytes:
    """One Anthropic SSE event."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class StreamTranslator(ChatStreamTranslator):
    """Turns an OpenAI chat SSE byte stream into Anthropic Messages SSE events, incrementally."""

    def __init__(self, model: str) -> None:
        super().__init__()
        self.model = model
        self._block: tuple[str, int] | None = None  # ("text"|"tool", openai tool index)
        self._index = -1
        self._stop_reason: str | None = None
        self._stop_sequence: str | None = None
        self.usage: dict[str, int] = {}

    def _start(self) -> bytes:
        self._started = True
        message = {"id": new_message_id(), "type": "message", "role": "assistant",
                   "model": self.model, "content": [], "stop_reason": None,
                   "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}
        return (sse_event("message_start", {"type": "message_start", "message": message})
                + sse_event("ping", {"type": "ping"}))

    def _close_block(self) -> bytes:
        if self._block is None:
            return b""
        self._block = None
        return sse_event("content_block_stop", {"type": "content_block_stop",
                                                "index": self._index})

    def _open(self, kind: tuple[str, int], block: dict[str, Any]) -> bytes:
        out = self._close_block()
        self._index += 1
        self._block = kind
        return out + sse_event("content_block_start", {
            "type": "content_block_start", "index": self._index, "content_block": block})

    def _choice(self, choice: dict[str, Any]) -> bytes:
        out = b""
        delta = choice.get("delta") or {}
        text = delta.get("content")
        if text:
            if self._block is None or self._block[0] != "text":
                out += self._open(("text", 0), {"type": "text", "text": ""})
            out += sse_event("content_block_delta", {
                "type": "content_block_delta", "index": self._index,
                "delta": {"type": "text_delta", "text": text}})
        for call in delta.get("tool_calls") or []:
            position = int(call.get("index", 0))
            function = call.get("function") or {}
            if self._block != ("tool", position):
                out += self._open(("tool", position), {
                    "type": "tool_use", "id": call.get("id") or f"toolu_{uuid.uuid4().hex}",
                    "name": function.get("name", ""), "input": {}})
            if function.get("arguments"):
                out += sse_event("content_block_delta", {
                    "type": "content_block_delta", "index": self._index,
                    "delta": {"type": "input_json_delta",
                              "partial_json": function["arguments"]}})
        finish = choice.get("finish_reason")
        if finish:
            self._stop_reason = _STOP_REASONS.get(finish, "end_turn")
            if finish == "stop" and isinstance(choice.get("stop_reason"), str):
                self._stop_reason = "stop_sequence"
                self._stop_sequence = choice["stop_reason"]
        return out

    def _closing(self) -> bytes:
        out = self._close_block()
        prompt, completion = self._usage
        self.usage = {"prompt_tokens": prompt, "completion_tokens": completion}
        out += sse_event("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": self._stop_reason or "end_turn",
                      "stop_sequence": self._stop_sequence},
            "usage": {"input_tokens": prompt, "output_tokens": completion}})
        return out + sse_event("message_stop", {"type": "message_stop"})


def estimate_tokens(body: dict[str, Any]) -> int:
    """An estimate of a Messages request's input tokens (about 4 bytes of UTF-8 per token,
    plus a few per message), for /v1/messages/count_tokens without a model round trip."""
    size = 0
    system = body.get("system")
    if system:
        size += len(json.dumps(system, ensure_ascii=False).encode())
    for message in body.get("messages") or []:
        size += 16 + len(json.dumps(message.get("content", ""), ensure_ascii=False).encode())
    if body.get("tools"):
        size += len(json.dumps(body["tools"], ensure_ascii=False).encode())
    return max(1, math.ceil(size / 4))
