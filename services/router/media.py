"""Remote media references in T1 requests: found here, refused by the HTTP API.

Model servers fetch media given by URL (vLLM fetches `image_url`, `audio_url`, `video_url`
and `file` URLs by default), so a T1 request, or an agent a prompt steered, could make the
model server call out with data in the URL. In a T1 or T1-strict request every media
reference must be inline (`data:` URIs, base64) or start with one of the profile's
`local_media_prefixes` (local servers, checked like backends by `config check`).

What counts as a media reference, at any depth of a message (and of an Anthropic
`system`, and of a Responses `input` or `instructions` item), whatever block or part type
encloses it:

* a URL field: `image_url`, `video_url`, `audio_url`, `file_url` or `url` holding a string
  (OpenAI's `{"image_url": {"url": …}}`, the Responses-style `{"image_url": "…"}`,
  Anthropic's `{"source": {"type": "url", "url": …}}`): it must be a `data:` URI or start
  with an allowed prefix;
* a data field: `data` or `file_data` (`input_audio.data`, `file.file_data`): base64 or a
  `data:` URI; one that starts with another URL scheme is a URL in disguise.

Text (`text`, `content` strings, tool arguments) is never read: a prompt may mention any
URL. Pure: no I/O, one walk over the message structure, no copy.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

URL_FIELDS = frozenset({"image_url", "video_url", "audio_url", "file_url", "url"})
DATA_FIELDS = frozenset({"data", "file_data"})
_MEDIA_FIELDS = URL_FIELDS | DATA_FIELDS
_SCHEME = re.compile(r"^\s*[A-Za-z][A-Za-z0-9+.-]*:")

# Which top-level fields hold messages, per API and path.
_SCANNED: dict[str, tuple[str, ...]] = {
    "/chat/completions": ("messages",),
    "/responses": ("input", "instructions"),
    "anthropic": ("messages", "system"),
}


def _inline(value: str) -> bool:
    return value.lstrip()[:5].lower() == "data:"


def _remote_url(value: str, allowed: Sequence[str]) -> bool:
    """A URL field's value that a model server would fetch from elsewhere."""
    if not value or _inline(value):
        return False
    start = value.lstrip()
    return not any(start.startswith(prefix) for prefix in allowed)


def _remote_data(value: str, allowed: Sequence[str]) -> bool:
    """A data field's value that is a URL rather than inline data (base64 has no `:`)."""
    return bool(_SCHEME.match(value)) and _remote_url(value, allowed)


def remote_media(api: str, path: str, body: dict[str, Any],
                 allowed: Sequence[str] = ()) -> str | None:
    """The JSON path (`messages[0].content[1].image_url.url`) of the first remote media
    reference in a request body, or None. `api` is "openai", "responses" or "anthropic",
    `path` the OpenAI endpoint (`/chat/completions`, `/responses`; completions and
    embeddings carry no media)."""
    roots = [body[field] for field in _SCANNED.get("anthropic" if api == "anthropic" else path,
                                                    ()) if isinstance(body.get(field), list)]
    # The hot path: one walk without paths, and paths only for a request it refuses.
    if not roots or not _any_remote(roots, allowed):
        return None
    return _first_remote(body, _SCANNED["anthropic" if api == "anthropic" else path], allowed)


def _remote_field(key: str, value: str, allowed: Sequence[str]) -> bool:
    return (key in URL_FIELDS and _remote_url(value, allowed)) or \
        (key in DATA_FIELDS and _remote_data(value, allowed))


def _any_remote(roots: list[Any], allowed: Sequence[str]) -> bool:
    stack = list(roots)
    pop, push, extend = stack.pop, stack.append, stack.extend
    while stack:
        value = pop()
        kind = type(value)
        if kind is dict:
            for key, item in value.items():
                kind = type(item)
                if kind is str:
                    if key in _MEDIA_FIELDS and _remote_field(key, item, allowed):
                        return True
                elif kind is dict or kind is list:
                    push(item)
        elif kind is list:
            extend(value)
    return False


def _first_remote(body: dict[str, Any], fields: tuple[str, ...],
                  allowed: Sequence[str]) -> str | None:
    """The path of the first remote reference in document order."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [
        (body[field], (field,)) for field in reversed(fields)
        if isinstance(body.get(field), list)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, dict):
            children = []
            for key, item in value.items():
                if isinstance(item, str):
                    if _remote_field(key, item, allowed):
                        return json_path((*where, key))
                elif isinstance(item, dict | list):
                    children.append((item, (*where, key)))
            stack.extend(reversed(children))
        elif isinstance(value, list):
            stack.extend((item, (*where, index)) for index, item in reversed(
                list(enumerate(value))) if isinstance(item, dict | list))
    return None


def json_path(parts: Sequence[str | int]) -> str:
    """`("messages", 0, "content", 1, "image_url", "url")` → `messages[0].content[1]…`."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text
