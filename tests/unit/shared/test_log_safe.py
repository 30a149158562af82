"""What of a backend's error may be logged: short tokens and sizes, never its words."""

from __future__ import annotations

import json

import pytest

from mushishi.shared.log_safe import body_facts, error_facts, without_quoted

SECRET = "the user's private question"


@pytest.mark.parametrize(("body", "facts"), [
    ({"error": {"message": SECRET, "type": "BadRequestError", "code": 400}},
     "code 400, type BadRequestError"),
    ({"error": {"message": SECRET, "type": "invalid_request_error", "code": "context_length"}},
     "code context_length, type invalid_request_error"),
    ({"error": {"message": "x", "type": SECRET, "code": SECRET}}, ""),  # not tokens
    ({"error": {"message": "x", "code": True}}, ""),
    ({"error": SECRET}, ""),
    ({"message": SECRET, "type": "error", "code": "overloaded"}, "code overloaded, type error"),
    ({"error": {"type": "a" * 65}}, ""),
])
def test_only_short_tokens_of_an_error_are_kept(body: dict, facts: str) -> None:
    raw = json.dumps(body).encode()
    expected = f"{facts}, {len(raw)} bytes" if facts else f"{len(raw)} bytes"
    assert body_facts(raw) == expected
    assert SECRET not in body_facts(raw)


def test_a_body_that_is_not_json_is_only_counted() -> None:
    assert body_facts(f"<html>{SECRET}</html>".encode()) == "40 bytes, not JSON"
    assert body_facts(b"") == "0 bytes"


def test_error_facts_of_anything_but_an_object_is_empty() -> None:
    assert error_facts(SECRET) == "" and error_facts(None) == "" and error_facts([1]) == ""


@pytest.mark.parametrize(("text", "kept"), [
    (f"not an HTTP/1.x status line: b'{SECRET}'", "not an HTTP/1.x status line"),
    (f"malformed response header: b'x-echo: {SECRET}'", "malformed response header"),
    (f"bad chunk size b'{SECRET}'", "bad chunk size"),
    ("the upstream closed the connection", "the upstream closed the connection"),
    ("[Errno 104] Connection reset by peer", "[Errno 104] Connection reset by peer"),
    (f"'{SECRET}'", "unreadable answer"),
])
def test_an_exception_message_is_cut_where_it_quotes(text: str, kept: str) -> None:
    assert without_quoted(text) == kept
