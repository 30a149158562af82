"""Bad input gets a 4xx with a stable code, and no input on the request path yields a 5xx."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mushishi.services.router.errors import STABLE_CODES
from tests.integration.router.harness import PERSONAL_KEY, PRIVATE_KEY, Box, running_box

GOOD = {"model": "private", "messages": [{"role": "user", "content": "hi"}]}
KEY = {"Authorization": f"Bearer {PERSONAL_KEY}"}
JSON = {"Content-Type": "application/json"}

CASES = [
    # (id, method, path, headers, body bytes, status, code)
    ("malformed-json", "POST", "/v1/chat/completions", {**KEY, **JSON}, b'{"model": "private",',
     400, "invalid_request"),
    ("not-an-object", "POST", "/v1/chat/completions", {**KEY, **JSON}, b"[1, 2]", 400,
     "invalid_request"),
    ("nan-is-not-json", "POST", "/v1/chat/completions", {**KEY, **JSON},
     b'{"model": "private", "temperature": NaN, "messages": [{"role": "user"}]}', 400,
     "invalid_request"),
    ("deep-nesting", "POST", "/v1/chat/completions", {**KEY, **JSON}, b"[" * 60000, 400,
     "invalid_request"),
    ("bad-utf8", "POST", "/v1/chat/completions", {**KEY, **JSON}, b'{"model": "\xff\xfe"}',
     400, "invalid_request"),
    ("wrong-content-type", "POST", "/v1/chat/completions",
     {**KEY, "Content-Type": "text/plain"}, json.dumps(GOOD).encode(), 415, "invalid_request"),
    ("no-content-type", "POST", "/v1/chat/completions", KEY, json.dumps(GOOD).encode(), 415,
     "invalid_request"),
    ("oversized", "POST", "/v1/chat/completions", {**KEY, **JSON},
     json.dumps({**GOOD, "pad": "x" * 70_000}).encode(), 413, "request_too_large"),
    ("unknown-profile", "POST", "/v1/chat/completions", {**KEY, **JSON},
     json.dumps({**GOOD, "model": "gpt-4o"}).encode(), 404, "unknown_profile"),
    ("missing-model", "POST", "/v1/chat/completions", {**KEY, **JSON},
     json.dumps({"messages": GOOD["messages"]}).encode(), 400, "invalid_request"),
    ("model-not-a-string", "POST", "/v1/chat/completions", {**KEY, **JSON},
     json.dumps({**GOOD, "model": 7}).encode(), 400, "invalid_request"),
    ("missing-messages", "POST", "/v1/chat/completions", {**KEY, **JSON},
     json.dumps({"model": "private"}).encode(), 400, "invalid_request"),
    ("empty-messages", "POST", "/v1/chat/completions", {**KEY, **JSON},
     json.dumps({"model": "private", "messages": []}).encode(), 400, "invalid_request"),
    ("stream-not-bool", "POST", "/v1/chat/completions", {**KEY, **JSON},
     json.dumps({**GOOD, "stream": "yes"}).encode(), 400, "invalid_request"),
    ("pin-outside-chain", "POST", "/v1/chat/completions", {**KEY, **JSON},
     json.dumps({**GOOD, "model": "private/moonshotai/kimi-k2.6"}).encode(), 400,
     "invalid_request"),
    ("missing-prompt", "POST", "/v1/completions", {**KEY, **JSON},
     json.dumps({"model": "private"}).encode(), 400, "invalid_request"),
    ("missing-input", "POST", "/v1/embeddings", {**KEY, **JSON},
     json.dumps({"model": "private"}).encode(), 400, "invalid_request"),
    ("anthropic-no-max-tokens", "POST", "/v1/messages", {**KEY, **JSON},
     json.dumps(GOOD).encode(), 400, "invalid_request"),
    ("anthropic-bad-role", "POST", "/v1/messages", {**KEY, **JSON},
     json.dumps({**GOOD, "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}
                ).encode(), 400, "invalid_request"),
    ("anthropic-bad-block", "POST", "/v1/messages", {**KEY, **JSON},
     json.dumps({**GOOD, "max_tokens": 5, "messages": [{"role": "user", "content": [
         {"type": "video"}]}]}).encode(), 400, "invalid_request"),
    ("no-key", "POST", "/v1/chat/completions", JSON, json.dumps(GOOD).encode(), 401,
     "invalid_api_key"),
    ("wrong-key", "POST", "/v1/chat/completions", {"Authorization": "Bearer sk-nope", **JSON},
     json.dumps(GOOD).encode(), 401, "invalid_api_key"),
    ("wrong-scheme", "POST", "/v1/chat/completions", {"Authorization": f"Basic {PERSONAL_KEY}",
                                                      **JSON},
     json.dumps(GOOD).encode(), 401, "invalid_api_key"),
    ("key-for-another-profile", "POST", "/v1/chat/completions",
     {"Authorization": f"Bearer {PRIVATE_KEY}", **JSON},
     json.dumps({**GOOD, "model": "personal"}).encode(), 403, "profile_forbidden"),
    ("x-api-key-for-another-profile", "POST", "/v1/messages",
     {"x-api-key": PRIVATE_KEY, **JSON},
     json.dumps({**GOOD, "model": "personal", "max_tokens": 5}).encode(), 403,
     "profile_forbidden"),
    ("unknown-path", "POST", "/v1/assistants", {**KEY, **JSON}, b"{}", 404, "not_found"),
    ("responses-without-input", "POST", "/v1/responses", {**KEY, **JSON},
     b'{"model": "private"}', 400, "invalid_request"),
    ("wrong-method", "GET", "/v1/chat/completions", KEY, b"", 405, "method_not_allowed"),
    ("models-without-key", "GET", "/v1/models", {}, b"", 401, "invalid_api_key"),
]


@pytest.fixture
async def small_box(tmp_path: Path):
    async with running_box(tmp_path, router_extra="max_body_bytes = 65536") as box:
        yield box


@pytest.mark.parametrize(("method", "path", "headers", "body", "status", "code"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
async def test_bad_input_gets_a_4xx_with_its_stable_code(
    small_box: Box, method: str, path: str, headers: dict[str, str], body: bytes, status: int,
    code: str,
) -> None:
    async with aiohttp.ClientSession(skip_auto_headers=["Content-Type"]) as session, \
            session.request(method, small_box.base_url + path, headers=headers,
                            data=body) as response:
        raw = await response.read()
        assert response.status == status, raw
        payload = json.loads(raw)
        assert payload["error"]["code"] == code
        assert payload["error"]["code"] in STABLE_CODES
        assert payload["error"]["message"]
        for header in ("X-Mushishi-Profile", "X-Mushishi-Tier", "X-Mushishi-Backend"):
            assert header in response.headers
    assert small_box.egress.requests == []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
fields = st.fixed_dictionaries({}, optional={
    "model": st.sampled_from(["private", "personal", "client", "strictcpu", "nope",
                              "private/cpu-alias", "personal/groq", ""]) | json_values,
    "messages": st.lists(st.fixed_dictionaries({}, optional={
        "role": st.sampled_from(["user", "assistant", "system", "tool", "x"]) | json_values,
        "content": st.text(max_size=20) | json_values}), max_size=3) | json_values,
    "stream": st.booleans() | json_values,
    "max_tokens": st.integers(-2, 100) | json_values,
    "prompt": json_values, "input": json_values, "tools": json_values,
    "tool_choice": json_values, "system": json_values, "fallbacks": json_values,
})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(
    path=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                          "/v1/messages", "/v1/messages/count_tokens"]),
    body=fields.map(lambda d: json.dumps(d).encode()) | st.binary(max_size=64),
    content_type=st.sampled_from(["application/json", "application/json; charset=utf-8",
                                  "text/plain", ""]),
    key=st.sampled_from([PERSONAL_KEY, PRIVATE_KEY, "", "sk-bad"]),
)
async def test_fuzzed_requests_never_yield_a_5xx(
    box: Box, path: str, body: bytes, content_type: str, key: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    async with aiohttp.ClientSession(skip_auto_headers=["Content-Type"]) as session, \
            session.post(box.base_url + path, headers=headers, data=body) as response:
        raw = await response.read()
        if response.status == 503 and json.loads(raw)["error"]["code"] == "mode_mismatch":
            return  # profile client requires GPU mode forensic, and no gpud confirms it here
        # every backend here is healthy: any other 5xx would be the router's own failure
        assert response.status < 500, (response.status, raw)
        if response.status >= 400:
            payload = json.loads(raw)
            assert payload["error"]["code"] in STABLE_CODES, payload
