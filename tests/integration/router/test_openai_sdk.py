"""The official openai SDK against the running router: chat, completions, embeddings, models,
streaming and errors, over TCP and over the unix socket."""

from __future__ import annotations

import httpx2 as httpx
import openai
import pytest

from tests.integration.router.harness import PERSONAL_KEY, PRIVATE_KEY, Box


def client(box: Box, key: str = PERSONAL_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=box.openai_base, api_key=key, max_retries=0)


async def test_chat_completion_through_private_profile_answers_from_gpu(box: Box) -> None:
    async with client(box) as api:
        raw = await api.chat.completions.with_raw_response.create(
            model="private", messages=[{"role": "user", "content": "hello"}])
        completion = raw.parse()
    assert completion.choices[0].message.content == " ".join(f"gpu-{i}" for i in range(8))
    assert completion.usage is not None and completion.usage.completion_tokens == 8
    assert raw.headers["x-mushishi-profile"] == "private"
    assert raw.headers["x-mushishi-tier"] == "T1"
    assert raw.headers["x-mushishi-backend"] == "gpu"
    assert float(raw.headers["x-mushishi-overhead-ms"]) >= 0
    # the backend got its own model name, never the caller's key
    sent = box.gpu.chat_requests()[-1]
    assert sent.body["model"] == "gpu-model"
    assert "Authorization" not in sent.headers and PERSONAL_KEY not in str(sent.headers)


async def test_streamed_chat_completion_arrives_token_by_token_with_usage(box: Box) -> None:
    async with client(box) as api:
        stream = await api.chat.completions.create(
            model="private", messages=[{"role": "user", "content": "hello"}], stream=True,
            stream_options={"include_usage": True})
        text = ""
        usage = None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
            if chunk.usage:
                usage = chunk.usage
    assert text == " ".join(f"gpu-{i}" for i in range(8))
    assert usage is not None and usage.completion_tokens == 8


async def test_completions_and_embeddings_pass_through(box: Box) -> None:
    async with client(box) as api:
        completion = await api.completions.create(model="private", prompt="Once upon")
        embeddings = await api.embeddings.create(model="private", input=["a", "b"])
        streamed = await api.completions.create(model="private", prompt="x", stream=True)
        pieces = [chunk.choices[0].text async for chunk in streamed]
    assert completion.choices[0].text.startswith("gpu-0")
    assert [e.index for e in embeddings.data] == [0, 1] and len(embeddings.data[0].embedding) == 8
    assert "".join(pieces).startswith("gpu-0")


async def test_models_lists_only_the_profiles_of_the_key(box: Box) -> None:
    async with client(box, PRIVATE_KEY) as api:
        models = [model.id async for model in api.models.list()]
    assert models == ["private"]


async def test_errors_surface_as_sdk_exceptions_with_stable_codes(box: Box) -> None:
    async with client(box, "sk-wrong") as api:
        with pytest.raises(openai.AuthenticationError) as caught:
            await api.chat.completions.create(model="private",
                                              messages=[{"role": "user", "content": "x"}])
    assert caught.value.code == "invalid_api_key"
    async with client(box, PRIVATE_KEY) as api:
        with pytest.raises(openai.PermissionDeniedError) as forbidden:
            await api.chat.completions.create(model="personal",
                                              messages=[{"role": "user", "content": "x"}])
        with pytest.raises(openai.NotFoundError) as unknown:
            await api.chat.completions.create(model="gpt-4o",
                                              messages=[{"role": "user", "content": "x"}])
    assert forbidden.value.code == "profile_forbidden"
    assert unknown.value.code == "unknown_profile"


async def test_unix_socket_caller_is_mapped_by_uid_without_a_key(box: Box) -> None:
    transport = httpx.AsyncHTTPTransport(uds=box.unix_socket)
    async with httpx.AsyncClient(transport=transport) as http, openai.AsyncOpenAI(
        base_url="http://router/v1", api_key="unused", http_client=http, max_retries=0,
        default_headers={"Authorization": ""},
    ) as api:
        completion = await api.chat.completions.create(
            model="private", messages=[{"role": "user", "content": "over the socket"}])
        with pytest.raises(openai.PermissionDeniedError):  # this uid maps to private only
            await api.chat.completions.create(
                model="personal", messages=[{"role": "user", "content": "x"}])
    assert completion.choices[0].message.content.startswith("gpu-0")
