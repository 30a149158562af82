"""The OpenAI chat side that the Anthropic and Responses translations share (pure, no I/O).

Both turn a client's request into a chat request, and a chat completion or a chat SSE byte
stream into the client API's shape: this module holds what does not depend on that shape
(the error types, reading the first choice, the usage counts and the chat SSE stream
itself); anthropic.py and responses.py say what each piece becomes.
"""

from __future__ import annotations

import json
from typing import Any

from mushishi.services.router.core import ROUTING_FIELDS


class TranslationError(ValueError):
    """The client's request cannot be expressed as an OpenAI chat request; names the field."""


class UpstreamStreamError(Exception):
    """The upstream stream carried an error event (`error`: its error object, which may
    quote the prompt: for the caller, never for a log)."""

    def __init__(self, error: object) -> None:
        super().__init__("the upstream stream carried an error event")
        self.error = error


def text_or_list(value: Any, where: str, items: str) -> str | list[Any]:
    """A client's `value` that must be a string or a list (of `items`), as it is."""
    if not isinstance(value, str | list):
        raise TranslationError(f"{where} must be a string or a list of {items}")
    return value


def chat_request(chat: dict[str, Any], stream: bool) -> dict[str, Any]:
    """A translated chat request made ready to send: streaming with usage when the client
    streams, and without the routing fields other routers obey (dropped, never obeyed)."""
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    for name in ROUTING_FIELDS:
        chat.pop(name, None)
    return chat


def first_choice(response: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A chat completion's first choice and its message (empty where missing)."""
    choices = response.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    return choice, choice.get("message") or {}


def usage_counts(usage: dict[str, Any]) -> tuple[int, int]:
    """(prompt tokens, completion tokens) of a chat `usage` object."""
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


class ChatStreamTranslator:
    """Reads an OpenAI chat SSE byte stream incrementally; a subclass says what the stream
    becomes (`_start`, `_choice`, `_closing`)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._started = False
        self._usage = (0, 0)  # (prompt, completion) tokens, as the last usage chunk said
        self.finished = False

    def _start(self) -> bytes:
        """The events that open the answer (sent before the first chunk's)."""
        raise NotImplementedError

    def _choice(self, choice: dict[str, Any]) -> bytes:
        """The events for one choice of a chunk."""
        raise NotImplementedError

    def _closing(self) -> bytes:
        """The events that close the answer (after the opening ones, once)."""
        raise NotImplementedError

    def finish(self) -> bytes:
        """Close the answer (on [DONE] or a clean end of the upstream stream)."""
        if self.finished:
            return b""
        self.finished = True
        return self._opening() + self._closing()

    def _opening(self) -> bytes:
        """The opening events if they have not gone out yet."""
        return b"" if self._started else self._start()

    def _chunk(self, chunk: dict[str, Any]) -> bytes:
        out = self._opening()
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = usage_counts(usage)
        for choice in chunk.get("choices") or []:
            out += self._choice(choice)
        return out

    def feed(self, data: bytes) -> bytes:
        """Translate the next bytes of the upstream stream; returns the events to send."""
        self._buffer += data
        out = b""
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            line = line.strip()
            if not line.startswith(b"data:"):
                continue  # comments (pings), event names, blank separators
            payload = line[5:].strip()
            if payload == b"[DONE]":
                out += self.finish()
                continue
            try:
                chunk = json.loads(payload)
            except json.JSONDecodeError:
                continue
            if isinstance(chunk, dict) and "error" in chunk:
                raise UpstreamStreamError(chunk["error"])
            if isinstance(chunk, dict):
                out += self._chunk(chunk)
        return out
