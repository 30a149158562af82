"""The T1 media scan: every remote media reference is found, with its JSON path, wherever it
is nested; inline data, allowed local prefixes and text pass."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mushishi.services.router.media import URL_FIELDS, json_path, remote_media

REMOTE = "https://203.0.113.7/x.png?d=secret"
INLINE = "data:image/png;base64,iVBORw0KGgo="
LOCAL = "http://127.0.0.1:8090/media/"


def user(*parts: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": list(parts)}]}


@pytest.mark.parametrize(("api", "path", "body", "found"), [
    # OpenAI chat parts
    ("openai", "/chat/completions", user({"type": "image_url", "image_url": {"url": REMOTE}}),
     "messages[0].content[0].image_url.url"),
    ("openai", "/chat/completions", user({"type": "image_url", "image_url": REMOTE}),
     "messages[0].content[0].image_url"),
    ("openai", "/chat/completions", user({"type": "text", "text": "x"},
                                         {"type": "video_url", "video_url": {"url": REMOTE}}),
     "messages[0].content[1].video_url.url"),
    ("openai", "/chat/completions", user({"type": "audio_url", "audio_url": {"url": REMOTE}}),
     "messages[0].content[0].audio_url.url"),
    ("openai", "/chat/completions", user({"type": "input_audio", "input_audio": {
        "data": REMOTE, "format": "wav"}}), "messages[0].content[0].input_audio.data"),
    ("openai", "/chat/completions", user({"type": "file", "file": {"file_data": REMOTE}}),
     "messages[0].content[0].file.file_data"),
    ("openai", "/chat/completions", user({"type": "file", "file": {"file_url": REMOTE}}),
     "messages[0].content[0].file.file_url"),
    ("openai", "/chat/completions", user({"type": "image_url", "image_url": {
        "url": "file:///etc/shadow"}}), "messages[0].content[0].image_url.url"),
    ("openai", "/chat/completions", user({"type": "image_url", "image_url": {
        "url": "  HTTPS://203.0.113.7/"}}), "messages[0].content[0].image_url.url"),
    ("openai", "/chat/completions", user({"type": "image_url", "image_url": {
        "url": "http://127.0.0.1:8090/elsewhere/x"}}), "messages[0].content[0].image_url.url"),
    # tool results nest parts too
    ("openai", "/chat/completions", {"messages": [{"role": "tool", "tool_call_id": "t",
                                                   "content": [{"type": "image_url",
                                                                "image_url": {"url": REMOTE}}]}]},
     "messages[0].content[0].image_url.url"),
    # Anthropic blocks, tool results and system included
    ("anthropic", "/chat/completions", user({"type": "image", "source": {
        "type": "url", "url": REMOTE}}), "messages[0].content[0].source.url"),
    ("anthropic", "/chat/completions", user({"type": "document", "source": {
        "type": "url", "url": REMOTE}}), "messages[0].content[0].source.url"),
    ("anthropic", "/chat/completions", user({"type": "tool_result", "tool_use_id": "t",
                                             "content": [{"type": "image", "source": {
                                                 "type": "url", "url": REMOTE}}]}),
     "messages[0].content[0].content[0].source.url"),
    ("anthropic", "/chat/completions", {"system": [{"type": "image", "source": {
        "type": "url", "url": REMOTE}}], "messages": []}, "system[0].source.url"),
    # Responses input items and instructions
    ("openai", "/responses", {"input": [{"role": "user", "content": [
        {"type": "input_text", "text": "x"}, {"type": "input_image", "image_url": REMOTE}]}]},
     "input[0].content[1].image_url"),
    ("responses", "/responses", {"input": [{"type": "function_call_output", "call_id": "c",
                                            "output": [{"type": "input_file",
                                                        "file_url": REMOTE}]}]},
     "input[0].output[0].file_url"),
    ("responses", "/responses", {"input": "hi", "instructions": [
        {"role": "developer", "content": [{"type": "input_image", "image_url": REMOTE}]}]},
     "instructions[0].content[0].image_url"),
    ("responses", "/responses", {"input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": INLINE}]}]}, None),
    ("responses", "/responses", {"input": REMOTE}, None),
    # what passes
    ("openai", "/chat/completions", user({"type": "image_url", "image_url": {"url": INLINE}}),
     None),
    ("openai", "/chat/completions", user({"type": "image_url", "image_url": {
        "url": " DATA:image/png;base64,AAAA"}}), None),
    ("openai", "/chat/completions", user({"type": "image_url", "image_url": {
        "url": LOCAL + "scan.png"}}), None),
    ("openai", "/chat/completions", user({"type": "input_audio", "input_audio": {
        "data": "/9j/4AAQSkZJRgABAQ==", "format": "wav"}}), None),  # base64 may start with /
    ("openai", "/chat/completions", user({"type": "text", "text": f"summarise {REMOTE}"}),
     None),
    ("openai", "/chat/completions", {"messages": [{"role": "user", "content": REMOTE}]}, None),
    ("anthropic", "/chat/completions", user({"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}), None),
    # completions and embeddings carry no media
    ("openai", "/completions", {"prompt": REMOTE, "messages": user({"image_url": REMOTE})},
     None),
    ("openai", "/embeddings", {"input": [{"image_url": REMOTE}]}, None),
])
def test_remote_media_is_found_with_its_path(api: str, path: str, body: dict[str, Any],
                                             found: str | None) -> None:
    assert remote_media(api, path, body, (LOCAL,)) == found


def test_the_first_reference_in_document_order_is_named() -> None:
    body = user({"type": "image_url", "image_url": {"url": INLINE}},
                {"type": "image_url", "image_url": {"url": REMOTE}},
                {"type": "video_url", "video_url": {"url": REMOTE}})
    assert remote_media("openai", "/chat/completions", body) == \
        "messages[0].content[1].image_url.url"


def test_a_structure_nested_deeper_than_the_interpreter_recurses_is_scanned() -> None:
    value: Any = {"image_url": {"url": REMOTE}}
    for _ in range(5000):
        value = [value]
    found = remote_media("openai", "/chat/completions",
                         {"messages": [{"role": "user", "content": value}]})
    assert found is not None and found.endswith("image_url.url")


# -- property: no remote URL in a media field passes, however deep -------------------------

_KEYS = st.sampled_from(["type", "text", "content", "source", "parts", "image", "meta",
                         "role", "cache_control", "detail", "name"])
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20),
                     st.just(REMOTE), st.just(INLINE))
_JSON = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(_KEYS, inner, max_size=4)), max_leaves=25)
_SCHEMES = st.sampled_from(["http", "https", "ftp", "file", "s3", "gs", "ws", "HTTP"])


@st.composite
def message_with_remote_media(draw: st.DrawFn) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """Arbitrary messages (text mentioning URLs included) with one remote URL planted in a
    media field at a random depth."""
    messages = draw(st.lists(st.dictionaries(_KEYS, _JSON, max_size=4), min_size=1,
                             max_size=3))
    url = f"{draw(_SCHEMES)}://{draw(st.from_regex(r'[a-z0-9.]{1,12}', fullmatch=True))}/p"
    field = draw(st.sampled_from(sorted(URL_FIELDS)))
    planted: Any = {field: url}
    route: list[Any] = [field]
    for key in draw(st.lists(_KEYS, max_size=6)):
        if draw(st.booleans()):
            planted, route = [planted], [0, *route]
        planted, route = {key: planted}, [key, *route]
    index = draw(st.integers(0, len(messages) - 1))
    host = messages[index]
    key = draw(_KEYS)
    host[key] = planted
    return {"messages": messages}, ("messages", index, key, *route)


@given(message_with_remote_media())
def test_no_remote_url_in_a_media_field_passes_however_deep(
        case: tuple[dict[str, Any], tuple[Any, ...]]) -> None:
    body, planted = case
    assert remote_media("openai", "/chat/completions", body) == json_path(planted)
    assert remote_media("anthropic", "/chat/completions", body) == json_path(planted)


@given(st.lists(st.dictionaries(_KEYS, _JSON, max_size=4), max_size=4))
def test_messages_without_media_fields_always_pass(messages: list[dict[str, Any]]) -> None:
    # Text may mention any URL; only media fields are read.
    assert remote_media("openai", "/chat/completions", {"messages": messages}) is None


def test_json_path_spells_indices_and_keys() -> None:
    assert json_path(("messages", 0, "content", 1, "image_url", "url")) == \
        "messages[0].content[1].image_url.url"
    assert json.dumps(json_path(("system", 3))) == '"system[3]"'
