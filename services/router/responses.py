"""OpenAI Responses ⇄ OpenAI chat, for chat-only backends (pure, no I/O).

Covers what Codex-CLI-style clients and the OpenAI SDK send to `POST /v1/responses`: string
or item-list `input` (messages with input_text/output_text/input_image/input_file parts,
function_call and function_call_output items), `instructions`, function tools and
tool_choice, `text.format`, `max_output_tokens` and streaming (as Responses events). The
router keeps no state: `previous_response_id`, `conversation`, `store: true` and
`background: true` are refused (`refused_field`), and `item_reference` items with them.
Reasoning items in the history are dropped (chat backends cannot take them back; the count
is kept for the log); hosted tools (web_search, file_search, …) have no local equivalent and
are left out, like server tools in the Anthropic translation.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from mushishi.services.router import chat_stream
from mushishi.services.router.chat_stream import TranslationError, UpstreamStreamError

__all__ = ["ResponsesStreamTranslator", "TranslationError", "UpstreamStreamError",
           "chat_to_response", "refused_field", "responses_to_chat"]

_ROLES = {"user": "user", "assistant": "assistant", "system": "system",
          "developer": "system"}  # chat templates of local models rarely know `developer`
_TEXT_PARTS = frozenset({"input_text", "output_text", "text", "summary_text"})
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def refused_field(body: dict[str, Any]) -> tuple[str, str] | None:
    """(field, why) for a request that needs state the router does not keep, else None."""
    if body.get("previous_response_id") is not None:
        return "previous_response_id", (
            "the router keeps no responses: send the whole conversation in `input` (and "
            "`store: false`) instead of previous_response_id")
    if body.get("conversation") is not None:
        return "conversation", ("the router keeps no conversations: send the whole "
                                "conversation in `input` instead")
    if body.get("store") is True:
        return "store", ("the router keeps no responses: set `store` to false (or leave it "
                         "out); earlier turns go back in `input`")
    if body.get("background") is True:
        return "background", "background responses need a stored response: set it to false"
    return None


def new_id(prefix: str) -> str:
    """A fresh Responses-style id (`resp_…`, `msg_…`, `fc_…`, `rs_…`)."""
    return f"{prefix}_{uuid.uuid4().hex}"


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise TranslationError(f"{where} must be a string")
    return value


def _part(part: Any, where: str) -> dict[str, Any]:
    """One content part of a message as a chat content part."""
    if not isinstance(part, dict):
        raise TranslationError(f"{where} must be an object")
    kind = part.get("type")
    if kind in _TEXT_PARTS:
        return {"type": "text", "text": _text(part.get("text"), f"{where}.text")}
    if kind == "refusal":
        return {"type": "text", "text": _text(part.get("refusal"), f"{where}.refusal")}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str):
            raise TranslationError(f"{where}.image_url must be a URL or data: URI (file_id "
                                   "needs OpenAI's Files API, which the router does not have)")
        image: dict[str, Any] = {"url": url}
        if part.get("detail") in ("low", "high", "auto"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        if not isinstance(part.get("file_data"), str):
            raise TranslationError(f"{where} needs file_data (inline): file_id and file_url "
                                   "cannot be passed to a chat backend")
        file = {"file_data": part["file_data"]}
        if isinstance(part.get("filename"), str):
            file["filename"] = part["filename"]
        return {"type": "file", "file": file}
    if kind == "input_audio" and isinstance(part.get("input_audio"), dict):
        return {"type": "input_audio", "input_audio": part["input_audio"]}
    raise TranslationError(f"{where}.type {kind!r} is not supported")


def _content(content: Any, where: str) -> str | list[dict[str, Any]]:
    """A message's content: a string stays one; text-only parts join into one string."""
    content = chat_stream.text_or_list(content, where, "content parts")
    if isinstance(content, str):
        return content
    parts = [_part(part, f"{where}[{index}]") for index, part in enumerate(content)]
    if all(part["type"] == "text" for part in parts):
        return "".join(part["text"] for part in parts)
    return parts


def _output_text(output: Any, where: str) -> str:
    """A function_call_output's output as the tool message's text."""
    output = chat_stream.text_or_list(output, where, "content parts")
    if isinstance(output, str):
        return output
    texts = []
    for index, part in enumerate(output):
        converted = _part(part, f"{where}[{index}]")
        texts.append(converted["text"] if converted["type"] == "text"
                     else f"[{part.get('type')} omitted]")
    return "\n\n".join(texts)


class _History:
    """Chat messages built from Responses input items, in order."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.dropped_reasoning = 0

    def _assistant_for_calls(self) -> dict[str, Any]:
        """The assistant message a function_call joins: the last one, when nothing came after
        it, else a new one."""
        last = self.messages[-1] if self.messages else None
        if last is not None and last["role"] == "assistant":
            return last
        message: dict[str, Any] = {"role": "assistant", "content": None}
        self.messages.append(message)
        return message

    def add(self, item: Any, where: str) -> None:
        if not isinstance(item, dict):
            raise TranslationError(f"{where} must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            role = _ROLES.get(item.get("role"))  # type: ignore[arg-type]
            if role is None:
                raise TranslationError(f"{where}.role must be user, assistant, system or "
                                       "developer")
            content = _content(item.get("content"), f"{where}.content")
            if role != "user" and not isinstance(content, str):
                raise TranslationError(f"{where}.content: only user messages may carry "
                                       "images or files")
            self.messages.append({"role": role, "content": content})
        elif kind == "function_call":
            call_id, name = item.get("call_id"), item.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise TranslationError(f"{where} needs call_id and name strings")
            arguments = item.get("arguments", "")
            message = self._assistant_for_calls()
            message.setdefault("tool_calls", []).append({
                "id": call_id, "type": "function", "function": {
                    "name": name, "arguments": _text(arguments, f"{where}.arguments")}})
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str):
                raise TranslationError(f"{where}.call_id must be a string")
            self.messages.append({"role": "tool", "tool_call_id": call_id,
                                  "content": _output_text(item.get("output"),
                                                          f"{where}.output")})
        elif kind == "reasoning":
            self.dropped_reasoning += 1
        elif kind == "item_reference":
            raise TranslationError(f"{where}: item_reference needs stored items, and the "
                                   "router keeps none; send the item itself")
        else:
            raise TranslationError(f"{where}.type {kind!r} is not supported by a chat backend")


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise TranslationError("tools must be a list")
    converted = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise TranslationError(f"tools[{index}] must be an object")
        if tool.get("type") != "function":
            continue  # hosted tools (web_search, file_search, …) have no local equivalent
        if not isinstance(tool.get("name"), str):
            raise TranslationError(f"tools[{index}].name must be a string")
        function: dict[str, Any] = {"name": tool["name"]}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        function["parameters"] = tool.get("parameters") or {"type": "object",
                                                            "properties": {}}
        if isinstance(tool.get("strict"), bool):
            function["strict"] = tool["strict"]
        converted.append({"type": "function", "function": function})
    return converted


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and \
            isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise TranslationError("tool_choice must be auto, none, required or "
                           '{"type": "function", "name": …}')


def _response_format(text: Any) -> dict[str, Any] | None:
    if not isinstance(text, dict) or not isinstance(text.get("format"), dict):
        return None
    form = text["format"]
    kind = form.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = {key: form[key] for key in ("name", "schema", "strict", "description")
                  if key in form}
        return {"type": "json_schema", "json_schema": schema}
    raise TranslationError("text.format.type must be text, json_object or json_schema")


def responses_to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """A Responses request as an OpenAI chat completions request (model untouched)."""
    history = _History()
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        history.messages.append({"role": "system", "content": instructions})
    elif isinstance(instructions, list):
        for index, item in enumerate(instructions):
            history.add(item, f"instructions[{index}]")
    elif instructions is not None and not isinstance(instructions, str):
        raise TranslationError("instructions must be a string")
    given = body.get("input")
    if isinstance(given, str):
        history.messages.append({"role": "user", "content": given})
    elif isinstance(given, list):
        for index, item in enumerate(given):
            history.add(item, f"input[{index}]")
    else:
        raise TranslationError("input must be a string or a list of items")
    if not history.messages:
        raise TranslationError("input has no message the model can read")
    chat: dict[str, Any] = {"model": body["model"], "messages": history.messages}
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    for name in ("temperature", "top_p", "parallel_tool_calls"):
        if body.get(name) is not None:
            chat[name] = body[name]
    user = body.get("safety_identifier") or body.get("user")
    if isinstance(user, str):
        chat["user"] = user
    if body.get("tools"):
        tools = _tools(body["tools"])
        if tools:
            chat["tools"] = tools
            if body.get("tool_choice") is not None:
                chat["tool_choice"] = _tool_choice(body["tool_choice"])
    response_format = _response_format(body.get("text"))
    if response_format is not None:
        chat["response_format"] = response_format
    return chat_stream.chat_request(chat, bool(body.get("stream")))


def dropped_reasoning(body: dict[str, Any]) -> int:
    """How many reasoning items of `body`'s input the translation leaves out."""
    given = body.get("input")
    return sum(1 for item in given if isinstance(item, dict)
               and item.get("type") == "reasoning") if isinstance(given, list) else 0


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion}


def _response(request: dict[str, Any], model: str, response_id: str, created: int,
              status: str, output: list[dict[str, Any]],
              usage: dict[str, Any] | None, incomplete: str | None = None,
              error: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Response object echoing the request's settings, as OpenAI's does."""
    text = request.get("text") if isinstance(request.get("text"), dict) else None
    return {
        "id": response_id, "object": "response", "created_at": created, "status": status,
        "background": False, "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "model": model, "output": output,
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": None, "reasoning": {"effort": None, "summary": None},
        "store": False, "temperature": request.get("temperature"),
        "text": text or {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": request.get("tools") or [], "top_p": request.get("top_p"),
        "truncation": "disabled", "usage": usage, "user": request.get("user"),
        "metadata": request.get("metadata") or {},
    }


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [_text_part(text)] if status == "completed" else []}


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _call_item(item_id: str, call_id: str, name: str, arguments: str,
               status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id,
            "name": name, "arguments": arguments}


def _reasoning_item(item_id: str, text: str | None) -> dict[str, Any]:
    item: dict[str, Any] = {"id": item_id, "type": "reasoning", "summary": []}
    if text is not None:
        item["content"] = [{"type": "reasoning_text", "text": text}]
    return item


def _reasoning_of(message: dict[str, Any]) -> str | None:
    """The reasoning text a backend returned (vLLM and llama-server: reasoning_content)."""
    for name in ("reasoning_content", "reasoning"):
        if isinstance(message.get(name), str) and message[name]:
            return str(message[name])
    return None


def chat_to_response(response: dict[str, Any], request: dict[str, Any],
                     model: str) -> dict[str, Any]:
    """An OpenAI chat completion as a Response; `request` is the client's Responses request
    and `model` what it asked for."""
    choice, message = chat_stream.first_choice(response)
    output: list[dict[str, Any]] = []
    reasoning = _reasoning_of(message)
    if reasoning is not None:
        output.append(_reasoning_item(new_id("rs"), reasoning))
    if message.get("content"):
        output.append(_message_item(new_id("msg"), str(message["content"]), "completed"))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        output.append(_call_item(new_id("fc"), call.get("id") or new_id("call"),
                                 function.get("name", ""), function.get("arguments") or "",
                                 "completed"))
    incomplete = _INCOMPLETE.get(choice.get("finish_reason") or "")
    created = response.get("created")
    return _response(request, model, new_id("resp"),
                     created if isinstance(created, int) else int(time.time()),
                     "incomplete" if incomplete else "completed", output,
                     _usage(*chat_stream.usage_counts(response.get("usage") or {})), incomplete)


def sse_event(data: dict[str, Any]) -> bytes:
    """One Responses SSE event (`event:` is the payload's `type`)."""
    return (f"event: {data['type']}\ndata: "
            f"{json.dumps(data, separators=(',', ':'), ensure_ascii=False)}\n\n").encode()


class _Item:
    """One output item being streamed."""

    __slots__ = ("arguments", "call_id", "id", "index", "kind", "name", "text")

    def __init__(self, kind: str, index: int, item_id: str) -> None:
        self.kind = kind  # message | function_call | reasoning
        self.index = index
        self.id = item_id
        self.text = ""
        self.call_id = ""
        self.name = ""
        self.arguments = ""

    def done(self) -> dict[str, Any]:
        if self.kind == "message":
            return _message_item(self.id, self.text, "completed")
        if self.kind == "reasoning":
            return _reasoning_item(self.id, self.text)
        return _call_item(self.id, self.call_id, self.name, self.arguments, "completed")


class ResponsesStreamTranslator(chat_stream.ChatStreamTranslator):
    """Turns an OpenAI chat SSE byte stream into Responses SSE events, incrementally."""

    def __init__(self, request: dict[str, Any], model: str) -> None:
        super().__init__()
        self.request = request
        self.model = model
        self._id = new_id("resp")
        self._created = int(time.time())
        self._sequence = 0
        self._open: _Item | None = None
        self._calls: dict[int, _Item] = {}  # chat tool-call index → its item
        self._items: list[_Item] = []
        self._finish: str | None = None

    def _event(self, data: dict[str, Any]) -> bytes:
        data["sequence_number"] = self._sequence
        self._sequence += 1
        return sse_event(data)

    def _snapshot(self, status: str, *, error: dict[str, Any] | None = None) -> dict[str, Any]:
        done = status != "in_progress"
        incomplete = _INCOMPLETE.get(self._finish or "") if done and not error else None
        return _response(self.request, self.model, self._id, self._created,
                         "incomplete" if incomplete else status,
                         [item.done() for item in self._items] if done else [],
                         _usage(*self._usage) if done and not error else None,
                         incomplete, error)

    def _start(self) -> bytes:
        self._started = True
        return (self._event({"type": "response.created",
                             "response": self._snapshot("in_progress")})
                + self._event({"type": "response.in_progress",
                               "response": self._snapshot("in_progress")}))

    def _close(self) -> bytes:
        item, self._open = self._open, None
        if item is None:
            return b""
        out = b""
        where = {"item_id": item.id, "output_index": item.index}
        if item.kind == "message":
            out += self._event({"type": "response.output_text.done", **where,
                                "content_index": 0, "text": item.text, "logprobs": []})
            out += self._event({"type": "response.content_part.done", **where,
                                "content_index": 0, "part": _text_part(item.text)})
        elif item.kind == "reasoning":
            out += self._event({"type": "response.reasoning_text.done", **where,
                                "content_index": 0, "text": item.text})
            out += self._event({"type": "response.content_part.done", **where,
                                "content_index": 0,
                                "part": {"type": "reasoning_text", "text": item.text}})
        else:
            out += self._event({"type": "response.function_call_arguments.done", **where,
                                "arguments": item.arguments})
        return out + self._event({"type": "response.output_item.done",
                                  "output_index": item.index, "item": item.done()})

    def _begin(self, kind: str, prefix: str) -> tuple[_Item, bytes]:
        out = self._close()
        item = _Item(kind, len(self._items), new_id(prefix))
        self._items.append(item)
        self._open = item
        return item, out

    def _text(self, kind: str, text: str) -> bytes:
        """A text delta for the open message (or reasoning) item, opening one if needed."""
        out = b""
        item = self._open
        if item is None or item.kind != kind:
            item, out = self._begin(kind, "msg" if kind == "message" else "rs")
            added = _message_item(item.id, "", "in_progress") if kind == "message" else \
                _reasoning_item(item.id, None)
            part = _text_part("") if kind == "message" else \
                {"type": "reasoning_text", "text": ""}
            out += self._event({"type": "response.output_item.added",
                                "output_index": item.index, "item": added})
            out += self._event({"type": "response.content_part.added", "item_id": item.id,
                                "output_index": item.index, "content_index": 0,
                                "part": part})
        item.text += text
        delta: dict[str, Any] = {
            "type": "response.output_text.delta" if kind == "message"
            else "response.reasoning_text.delta",
            "item_id": item.id, "output_index": item.index, "content_index": 0,
            "delta": text}
        if kind == "message":
            delta["logprobs"] = []
        return out + self._event(delta)

    def _call(self, call: dict[str, Any]) -> bytes:
        out = b""
        position = int(call.get("index", 0))
        function = call.get("function") or {}
        item = self._calls.get(position)
        if item is None:
            item, out = self._begin("function_call", "fc")
            item.call_id = call.get("id") or new_id("call")
            item.name = function.get("name") or ""
            self._calls[position] = item
            out += self._event({"type": "response.output_item.added",
                                "output_index": item.index,
                                "item": _call_item(item.id, item.call_id, item.name, "",
                                                   "in_progress")})
        elif self._open is not item:
            return out  # chat streams do not interleave calls; a late fragment is dropped
        arguments = function.get("arguments")
        if arguments:
            item.arguments += arguments
            out += self._event({"type": "response.function_call_arguments.delta",
                                "item_id": item.id, "output_index": item.index,
                                "delta": arguments})
        return out

    def _choice(self, choice: dict[str, Any]) -> bytes:
        out = b""
        delta = choice.get("delta") or {}
        reasoning = _reasoning_of(delta)
        if reasoning:
            out += self._text("reasoning", reasoning)
        if delta.get("content"):
            out += self._text("message", str(delta["content"]))
        for call in delta.get("tool_calls") or []:
            out += self._call(call)
        if choice.get("finish_reason"):
            self._finish = choice["finish_reason"]
        return out

    def _closing(self) -> bytes:
        out = self._close()
        snapshot = self._snapshot("completed")
        kind = "response.incomplete" if snapshot["status"] == "incomplete" \
            else "response.completed"
        return out + self._event({"type": kind, "response": snapshot})

    def fail(self, message: str, code: str) -> bytes:
        """The events that end a stream broken after its first byte: an `error` event and
        `response.failed` (OpenAI's own pair)."""
        if self.finished:
            return b""
        self.finished = True
        out = self._opening()
        out += self._event({"type": "error", "code": code, "message": message,
                            "param": None})
        return out + self._event({"type": "response.failed", "response": self._snapshot(
            "failed", error={"code": "server_error", "message": message})})
