"""What of a backend's answer may enter a log line: structured facts, never its text.

Model servers and cloud providers quote the request in their errors ("… in your messages:
…", an SSE error event repeating the prompt), and the journal is read by alerts, by
`journalctl` and by whoever the box's logs are shipped to. So a log line about a backend's
error keeps only what cannot hold message content: the HTTP status, the error's `code` and
`type` when each is a short token, and the size of the body. The caller, whose prompt it
is, still gets the backend's own answer in the response body.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

_TOKEN = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
# Where an exception's message starts quoting bytes it was given: `: b'…'`, ` '…'`, `"…"`.
_QUOTED = re.compile(r"""[:\s]*b?['"]""")


def token(value: Any) -> str | None:
    """`value` as a short token (`server_error`, `InternalServerError`, `500`), else None."""
    if isinstance(value, bool) or value is None:
        return None
    text = str(value) if isinstance(value, int | str) else ""
    return text if _TOKEN.match(text) else None


def error_facts(error: Any) -> str:
    """`code X, type Y` of an error object (OpenAI's `error`, Anthropic's, vLLM's), only the
    parts that are short tokens; "" when there are none."""
    if not isinstance(error, Mapping):
        return ""
    facts = [f"{key} {found}" for key in ("code", "type")
             if (found := token(error.get(key))) is not None]
    return ", ".join(facts)


def body_facts(body: bytes) -> str:
    """What may be logged of an error body: its error's code and type tokens and its size,
    e.g. `code rate_limit_exceeded, type requests, 212 bytes`."""
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    facts = error_facts(error if isinstance(error, Mapping) else parsed)
    size = f"{len(body)} bytes" + ("" if parsed is not None or not body else ", not JSON")
    return f"{facts}, {size}" if facts else size


def without_quoted(text: str) -> str:
    """An exception's message cut where it starts quoting what it was given
    (`not an HTTP/1.x status line: b'…'` → `not an HTTP/1.x status line`)."""
    return _QUOTED.split(text, maxsplit=1)[0].strip() or "unreadable answer"
