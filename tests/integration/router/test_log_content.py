"""Logs never carry prompt or completion text, even when a backend's error quotes the prompt
(issue 13, hole 3): the router's and the egress's records of a failed hop keep structured
facts only (status, the backend's error code or type when it is a short token, byte counts),
while the caller still gets the backend's answer where it is theirs to read."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import aiohttp
import pytest

from tests.integration.router.harness import PERSONAL_KEY, running_box
from tests.standins.openai_server import Fault

MARKER = "PROMPT-MARKER-7f3a-never-in-a-log"
AUTH = {"Authorization": f"Bearer {PERSONAL_KEY}"}


def leaked(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Every captured record (its message and its journal fields) that holds the marker."""
    return [record.getMessage() for record in caplog.records
            if MARKER in record.getMessage() or MARKER in repr(vars(record))]


async def chat(base: str, model: str, **extra: object) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.post(
            base + "/v1/chat/completions", headers=AUTH,
            json={"model": model, "messages": [{"role": "user", "content": MARKER}],
                  **extra}) as response:
        return response.status, await response.read()


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_a_local_backend_error_quoting_the_prompt_is_never_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, status: int) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_box(tmp_path) as box:
        box.gpu.fail_next(Fault.echo(status))
        answered, _ = await chat(box.base_url, "private")  # falls back to cpu
        assert answered == 200
        box.gpu.fail_next(Fault.echo(status))
        failed, body = await chat(box.base_url, "client")  # T1-strict: no fallback
        assert failed in (502, 503), body
    assert leaked(caplog) == []


async def test_a_backend_4xx_quoting_the_prompt_reaches_the_caller_not_the_log(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_box(tmp_path) as box:
        box.gpu.fail_next(Fault.echo(400))
        status, body = await chat(box.base_url, "private")
    assert status == 400 and MARKER in body.decode()  # the caller's own prompt, to the caller
    assert leaked(caplog) == []


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_an_sse_error_event_quoting_the_prompt_is_never_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, api: str) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_box(tmp_path) as box:
        box.gpu.fail_next(Fault.error_event(after_chunks=2))
        async with aiohttp.ClientSession() as session:
            if api == "anthropic":
                request = session.post(box.base_url + "/v1/messages", headers={
                    "x-api-key": PERSONAL_KEY}, json={
                    "model": "private", "max_tokens": 16, "stream": True,
                    "messages": [{"role": "user", "content": MARKER}]})
            else:
                request = session.post(box.base_url + "/v1/chat/completions", headers=AUTH,
                                       json={"model": "private", "stream": True, "messages": [
                                           {"role": "user", "content": MARKER}]})
            async with request as response:
                assert response.status == 200
                streamed = await response.read()
    assert b"error" in streamed
    assert leaked(caplog) == []


async def test_a_provider_error_quoting_the_prompt_is_logged_by_neither_egress_nor_router(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_box(tmp_path, real_egress=True) as box:
        for fault in (Fault.echo(500), Fault.echo(429), Fault.echo(401)):
            box.cloud["kimi"].fail_next(fault)
            status, body = await chat(box.base_url, "cloudy")  # falls back to cpu
            assert status == 200, body
        assert len(box.cloud["kimi"].chat_requests()) == 3
    assert leaked(caplog) == []
    assert json.dumps(MARKER) not in caplog.text
