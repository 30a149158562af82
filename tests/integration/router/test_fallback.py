"""Fallback semantics against real stand-ins: what moves to the next hop, what is returned as
is, what ends a stream, and that T1 work never reaches the egress."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import aiohttp
import pytest

from tests.integration.router.harness import PERSONAL_KEY, Box, running_box, wait_for
from tests.standins.openai_server import Fault

AUTH = {"Authorization": f"Bearer {PERSONAL_KEY}"}
CHAT = {"messages": [{"role": "user", "content": "the secret plan"}]}


async def post(box: Box, model: str, *, stream: bool = False, **extra: object
               ) -> tuple[int, dict[str, str], bytes]:
    body = {"model": model, **CHAT, **extra}
    if stream:
        body["stream"] = True
    async with aiohttp.ClientSession() as session, session.post(
        box.base_url + "/v1/chat/completions", json=body, headers=AUTH,
    ) as response:
        return response.status, dict(response.headers), await response.read()


@pytest.mark.parametrize("fault", [
    Fault.status_code(500), Fault.status_code(503), Fault.status_code(429),
    Fault.status_code(404, "model not loaded"), Fault.close(),
], ids=["500", "503", "429", "backend-404", "closed"])
async def test_backend_failure_before_first_byte_moves_to_the_next_hop(
    box: Box, fault: Fault
) -> None:
    box.gpu.fail_next(fault)
    status, headers, body = await post(box, "private")
    assert status == 200, body
    assert headers["X-Mushishi-Backend"] == "cpu"
    assert headers["X-Mushishi-Fallbacks"] == "1"
    assert json.loads(body)["choices"][0]["message"]["content"].startswith("cpu-0")


async def test_request_caused_4xx_is_returned_as_is_without_fallback(box: Box) -> None:
    box.gpu.fail_next(Fault.status_code(400, "max_tokens is too large", code="bad_param"))
    status, headers, body = await post(box, "private")
    assert status == 400
    assert headers["X-Mushishi-Backend"] == "gpu"
    error = json.loads(body)["error"]
    assert error["message"] == "max_tokens is too large"
    assert (error["code"], error["backend_code"]) == ("invalid_request", "bad_param")
    assert box.cpu.chat_requests() == []


async def test_hung_backend_is_abandoned_after_the_first_byte_timeout(box: Box) -> None:
    box.gpu.fail_next(Fault.hang())
    status, headers, _ = await post(box, "private")
    assert (status, headers["X-Mushishi-Backend"]) == (200, "cpu")


async def test_refused_connection_marks_the_backend_down_and_skips_it_at_once(
    box: Box,
) -> None:
    await box.gpu.refuse()
    status, headers, _ = await post(box, "private")
    assert (status, headers["X-Mushishi-Backend"]) == (200, "cpu")
    assert box.router.state.health("gpu").value == "down"
    status, headers, _ = await post(box, "private")
    # known down: skipped from state, no failed attempt (no round trip) this time
    assert headers["X-Mushishi-Backend"] == "cpu" and "X-Mushishi-Fallbacks" not in headers
    await box.gpu.accept()
    await wait_for(lambda: box.router.state.health("gpu").value == "up",
                   what="gpu probed up again")
    status, headers, _ = await post(box, "private")
    assert headers["X-Mushishi-Backend"] == "gpu"


async def test_stream_failing_after_first_byte_ends_with_error_event_and_no_done(
    box: Box, caplog: pytest.LogCaptureFixture
) -> None:
    box.gpu.fail_next(Fault.die_mid_stream(after_chunks=3))
    with caplog.at_level(logging.INFO):
        status, headers, body = await post(box, "private", stream=True)
    assert status == 200 and headers["X-Mushishi-Backend"] == "gpu"
    events = [block for block in body.decode().split("\n\n") if block]
    assert b"[DONE]" not in body
    assert "gpu-0" in body.decode()
    last = json.loads(events[-1].removeprefix("data: "))
    assert last["error"]["code"] == "backend_failed"
    assert box.cpu.chat_requests() == []  # never spliced with a second backend
    assert any("failed after its first byte" in r.getMessage() for r in caplog.records)
    assert not any("the secret plan" in r.getMessage() for r in caplog.records)


async def test_stream_going_silent_is_ended_after_the_idle_timeout(box: Box) -> None:
    box.gpu.fail_next(Fault.hang_mid_stream(after_chunks=1))
    status, _, body = await post(box, "private", stream=True)
    assert status == 200 and b"[DONE]" not in body and b"backend_failed" in body


async def test_stream_failing_before_first_byte_falls_back_cleanly(box: Box) -> None:
    box.gpu.fail_next(Fault.die_mid_stream(after_chunks=0))
    status, headers, body = await post(box, "private", stream=True)
    assert (status, headers["X-Mushishi-Backend"]) == (200, "cpu")
    assert body.rstrip().endswith(b"data: [DONE]") and b"gpu-0" not in body


async def test_t1_strict_never_falls_back_and_names_the_backend_reason(box: Box) -> None:
    box.cpu.fail_next(Fault.status_code(503, "overloaded"))
    status, headers, body = await post(box, "strictcpu")
    error = json.loads(body)["error"]
    assert (status, error["code"]) == (502, "backend_failed")
    # Facts only: the backend's message may quote the prompt, and this reason is logged too.
    assert "cpu: answered 503 (code 503, type stand_in_error, " in error["message"]
    assert "overloaded" not in error["message"]
    assert headers["X-Mushishi-Tier"] == "T1-strict"
    assert box.egress.requests == [] and box.gpu.chat_requests() == []


async def test_t2_falls_through_local_hops_to_the_cloud_over_the_egress_protocol(
    box: Box,
) -> None:
    box.gpu.fail_always(Fault.status_code(500))
    box.cpu.fail_always(Fault.status_code(500))
    status, headers, _ = await post(box, "personal")
    assert (status, headers["X-Mushishi-Backend"]) == (200, "kimi")
    [sent] = box.egress.requests
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["X-Mushishi-Profile"] == "personal"
    assert sent.headers["X-Mushishi-Tier"] == "T2"
    assert sent.headers["X-Mushishi-Backend"] == "kimi"
    assert sent.body["model"] == "moonshotai/kimi-k2.6"
    assert "Authorization" not in sent.headers and "x-api-key" not in sent.headers


async def test_t1_with_every_local_hop_failing_never_reaches_the_egress(box: Box) -> None:
    box.gpu.fail_always(Fault.status_code(500))
    box.cpu.fail_always(Fault.status_code(500))
    status, _, body = await post(box, "private", fallbacks=["kimi"],
                                 extra_body={"api_base": "https://x"})
    assert status == 502
    assert json.loads(body)["error"]["code"] == "all_backends_failed"
    assert box.egress.requests == []


async def test_request_fields_that_widen_routing_are_dropped_never_obeyed(box: Box) -> None:
    status, headers, _ = await post(box, "private", fallbacks=["kimi", "groq"],
                                    api_base="https://evil.example.com", metadata={"x": 1})
    assert (status, headers["X-Mushishi-Backend"]) == (200, "gpu")
    sent = box.gpu.chat_requests()[-1].body
    assert "fallbacks" not in sent and "api_base" not in sent and sent["metadata"] == {"x": 1}


async def test_exhausted_cloud_budget_moves_to_the_next_provider(box: Box) -> None:
    box.gpu.fail_always(Fault.status_code(500))
    box.cpu.fail_always(Fault.status_code(500))
    box.egress.exhaust("kimi")
    status, headers, _ = await post(box, "personal")
    assert (status, headers["X-Mushishi-Backend"]) == (200, "groq")
    box.egress.exhaust("groq")
    box.gpu.fail_always(None)
    await box.gpu.refuse()
    await box.cpu.refuse()
    status, _, body = await post(box, "personal")
    assert (status, json.loads(body)["error"]["code"]) == (429, "budget_exhausted")


async def test_cloud_hop_without_egress_fails_with_a_clear_log_line(
    box: Box, caplog: pytest.LogCaptureFixture
) -> None:
    await box.egress.stop()
    with caplog.at_level(logging.ERROR):
        status, _, body = await post(box, "cloudy/moonshotai/kimi-k2.6")
    assert (status, json.loads(body)["error"]["code"]) == (502, "all_backends_failed")
    assert "mushishi-egress is not reachable" in json.loads(body)["error"]["message"]
    assert any("cannot reach mushishi-egress" in r.getMessage() for r in caplog.records)


async def test_anthropic_stream_failing_after_first_byte_ends_with_an_error_event(
    box: Box,
) -> None:
    box.gpu.fail_next(Fault.die_mid_stream(after_chunks=3))
    async with aiohttp.ClientSession() as session, session.post(
        box.base_url + "/v1/messages", headers=AUTH,
        json={"model": "private", "max_tokens": 16, "stream": True, **CHAT},
    ) as response:
        assert response.status == 200
        body = (await response.read()).decode()
    names = [line.removeprefix("event: ") for line in body.splitlines()
             if line.startswith("event: ")]
    assert names[0] == "message_start" and names[-1] == "error"
    assert "message_stop" not in names
    last = json.loads(body.strip().split("\n\n")[-1].split("data: ", 1)[1])
    assert last["error"]["code"] == "backend_failed"


async def test_unix_socket_backend_is_local_probed_and_answers(tmp_path: Path) -> None:
    from tests.standins.vllm import VllmStandin

    socket_path = str(tmp_path / "vllm.sock")
    unix_backend = await VllmStandin("gpu-model", name="unix", unix_path=socket_path).start()
    try:
        async with running_box(tmp_path, gpu_url=f"unix:{socket_path}") as box:
            assert box.router.table.backends["gpu"].local
            status, headers, body = await post(box, "private")
            assert (status, headers["X-Mushishi-Backend"]) == (200, "gpu")
            assert json.loads(body)["choices"][0]["message"]["content"].startswith("unix-0")
            assert [r.path for r in unix_backend.chat_requests()] == ["/v1/chat/completions"]
            assert any(r.path == "/health" for r in unix_backend.requests)
    finally:
        await unix_backend.stop()


async def test_client_disconnect_cancels_the_backend_request_and_frees_its_slot(
    box: Box, caplog: pytest.LogCaptureFixture
) -> None:
    box.gpu.fail_next(Fault.hang())
    with caplog.at_level(logging.INFO):
        request = asyncio.create_task(post(box, "private"))
        await wait_for(lambda: box.router.state.slots("gpu").in_flight == 1,
                       what="request at the backend")
        request.cancel()
        await wait_for(lambda: box.router.state.slots("gpu").in_flight == 0,
                       what="slot freed")
        await wait_for(lambda: box.router.in_flight == 0, what="request finished")
    assert any("private -> none: 0 cancelled" in r.getMessage() for r in caplog.records)
    await wait_for(lambda: not box.gpu._hung, what="backend saw the connection drop")


async def test_redirects_are_never_followed_and_proxy_variables_are_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.standins.vllm import VllmStandin

    elsewhere = await VllmStandin("gpu-model", name="elsewhere", accept_any_model=True).start()
    try:
        for variable in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
            monkeypatch.setenv(variable, elsewhere.origin)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        async with running_box(tmp_path) as box:
            box.gpu.fail_next(Fault.status_code(
                307, "moved", headers={"Location": elsewhere.url + "/chat/completions"}))
            status, headers, _ = await post(box, "private")
            assert (status, headers["X-Mushishi-Backend"]) == (200, "cpu")
            status, headers, _ = await post(box, "private")
            assert (status, headers["X-Mushishi-Backend"]) == (200, "gpu")
        assert elsewhere.requests == []  # neither the redirect target nor the "proxy"
    finally:
        await elsewhere.stop()
