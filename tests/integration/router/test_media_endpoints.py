"""Speech, images and rerank through the running router (DESIGN.md §9), with the official
openai SDK (httpx for rerank, which the SDK has no call for), against stand-in speech and
image servers that speak the real wire formats (tests/standins/speech.py, images.py)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest

from tests.integration.router.harness import Box, running_box, sha, wait_for
from tests.standins.images import ImageStandin
from tests.standins.openai_server import Fault
from tests.standins.speech import TtsStandin, WhisperStandin, make_wav

MEDIA_KEY = "sk-test-media"
PRIVATE_VOICE_KEY = "sk-test-private-voice"


@dataclass
class MediaBox:
    """The router with the usual stand-ins, plus speech and image servers."""

    box: Box
    whisper: WhisperStandin
    whisper_cpu: WhisperStandin
    tts: TtsStandin
    images: ImageStandin

    def client(self, key: str = MEDIA_KEY) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.box.openai_base, api_key=key, max_retries=0)


def media_config(whisper: str, whisper_cpu: str, tts: str, images: str) -> str:
    """Backends serving speech and images, and the profiles that use them."""
    return f"""
"{sha(MEDIA_KEY)}" = ["voice", "studio", "private", "strictcpu"]
"{sha(PRIVATE_VOICE_KEY)}" = ["privatevoice"]

[backends.whisper]
url = "{whisper}"
model = "whisper-large-v3"
endpoints = ["audio/transcriptions", "audio/translations"]

[backends.whisper-cpu]
url = "{whisper_cpu}"
model = "whisper-base-cpu"
endpoints = ["audio/transcriptions"]

[backends.tts]
url = "{tts}"
model = "kokoro"
endpoints = ["audio/speech"]

[backends.images]
url = "{images}"
model = "sdxl-turbo"
endpoints = ["images/generations", "images/edits"]

[profiles.voice]
tier = "T2"
chain = ["whisper", "whisper-cpu", "tts", "cpu"]
queue_timeout_s = 1

[profiles.privatevoice]
tier = "T1"
chain = ["whisper", "whisper-cpu", "cpu"]
queue_timeout_s = 1

[profiles.studio]
tier = "T2"
chain = ["images", "gpu"]
"""


@contextlib.asynccontextmanager
async def media_box(tmp_path: Path, *, tables: str = "", **config: Any
                    ) -> AsyncIterator[MediaBox]:
    whisper = await WhisperStandin("whisper-large-v3", name="whisper").start()
    whisper_cpu = await WhisperStandin("whisper-base-cpu", name="whisper-cpu").start()
    tts = await TtsStandin("kokoro", name="tts").start()
    images = await ImageStandin("sdxl-turbo", name="images").start()
    extra = media_config(whisper.url, whisper_cpu.url, tts.url, images.url) + tables
    try:
        async with running_box(tmp_path, extra=config.pop("extra", "") + extra,
                               **config) as box:
            yield MediaBox(box, whisper, whisper_cpu, tts, images)
    finally:
        for server in (whisper, whisper_cpu, tts, images):
            await server.stop()


@pytest.fixture
async def media(tmp_path: Path) -> AsyncIterator[MediaBox]:
    async with media_box(tmp_path) as running:
        yield running


def wav_file(tmp_path: Path, seconds: float) -> Path:
    path = tmp_path / "recording.wav"
    path.write_bytes(make_wav(seconds))
    return path


async def test_transcription_with_the_sdk_streams_the_wav_to_the_speech_backend(
        media: MediaBox, tmp_path: Path) -> None:
    audio = wav_file(tmp_path, 1.5)
    digest = hashlib.sha256(audio.read_bytes()).hexdigest()
    async with media.client() as api:
        with audio.open("rb") as handle:
            raw = await api.audio.transcriptions.with_raw_response.create(
                model="voice", file=handle)
        transcript = raw.parse()
        assert transcript.text == (f"whisper heard 1.50 seconds in {audio.stat().st_size} "
                                   f"bytes sha256 {digest[:16]}")
        assert raw.headers["x-mushishi-profile"] == "voice"
        assert raw.headers["x-mushishi-tier"] == "T2"
        assert raw.headers["x-mushishi-backend"] == "whisper"
        sent = media.whisper.chat_requests()[-1]
        assert sent.path == "/v1/audio/transcriptions"
        assert sent.body["model"] == "whisper-large-v3"  # the hop's model, not the profile
        assert sent.body["file"]["sha256"] == digest
        assert "Authorization" not in sent.headers
        # response_format is passed through, and so is the answer's content type.
        with audio.open("rb") as handle:
            text = await api.audio.transcriptions.create(model="voice", file=handle,
                                                         response_format="text")
        assert text.strip().startswith("whisper heard 1.50 seconds")
        for kind, first in (("srt", "1\n00:00:00,000 --> 00:00:01,500"),
                            ("vtt", "WEBVTT\n\n00:00:00.000 --> 00:00:01.500")):
            with audio.open("rb") as handle:
                subtitles = await api.audio.transcriptions.create(
                    model="voice", file=handle, response_format=kind)  # type: ignore[call-overload]
            assert str(subtitles).startswith(first), subtitles
        with audio.open("rb") as handle:
            verbose = await api.audio.transcriptions.create(
                model="voice", file=handle, response_format="verbose_json", language="en")
        assert verbose.duration == pytest.approx(1.5)
        assert media.whisper.chat_requests()[-1].body["language"] == "en"
        with audio.open("rb") as handle:
            translation = await api.audio.translations.create(model="voice", file=handle)
        assert translation.text.startswith("whisper heard 1.50 seconds")
        assert media.whisper.chat_requests()[-1].path == "/v1/audio/translations"
    # Metrics tell the endpoints apart: a transcription's latency is not a chat's.
    async with httpx.AsyncClient(base_url=media.box.base_url) as client:
        metrics = (await client.get("/metrics")).text
    assert 'mushishi_router_requests_total{backend="whisper",endpoint="audio/transcriptions",' \
        'outcome="success",profile="voice"} 5.0' in metrics
    assert 'mushishi_router_request_duration_seconds_count{backend="whisper",' \
        'endpoint="audio/translations",profile="voice"} 1.0' in metrics


async def test_streamed_transcription_passes_the_sse_events_through(
        media: MediaBox, tmp_path: Path) -> None:
    audio = wav_file(tmp_path, 0.5)
    async with media.client() as api:
        with audio.open("rb") as handle:
            stream = await api.audio.transcriptions.create(
                model="voice", file=handle, stream=True)
            events = [event async for event in stream]
    assert [event.type for event in events][-1] == "transcript.text.done"
    deltas = "".join(e.delta for e in events if e.type == "transcript.text.delta")
    assert deltas.strip() == events[-1].text
    assert events[-1].text.startswith("whisper heard 0.50 seconds")


async def test_a_failing_speech_backend_falls_back_to_the_next_one_with_the_whole_upload(
        media: MediaBox, tmp_path: Path) -> None:
    audio = wav_file(tmp_path, 2.0)
    digest = hashlib.sha256(audio.read_bytes()).hexdigest()
    media.whisper.fail_next(Fault.status_code(503))
    async with media.client() as api:
        with audio.open("rb") as handle:
            raw = await api.audio.transcriptions.with_raw_response.create(
                model="voice", file=handle)
    assert raw.headers["x-mushishi-backend"] == "whisper-cpu"
    assert raw.headers["x-mushishi-fallbacks"] == "1"
    assert raw.parse().text.startswith("whisper-cpu heard 2.00 seconds")
    # The replay is the caller's form, byte for byte but for the model.
    assert media.whisper_cpu.chat_requests()[-1].body["file"]["sha256"] == digest
    assert media.whisper_cpu.chat_requests()[-1].body["model"] == "whisper-base-cpu"


async def test_speech_is_streamed_back_to_a_file_with_its_content_type(
        media: MediaBox, tmp_path: Path) -> None:
    out = tmp_path / "speech.wav"
    text = "The quick brown fox jumps over the lazy dog, twice over."
    async with media.client() as api, api.audio.speech.with_streaming_response.create(
            model="voice", voice="af_heart", input=text, response_format="wav") as response:
        assert response.headers["content-type"] == "audio/wav"
        assert response.headers["x-mushishi-backend"] == "tts"
        await response.stream_to_file(out)
    import wave
    with wave.open(str(out)) as audio:
        assert audio.getframerate() == 8000
        assert audio.getnframes() / 8000 == pytest.approx(len(text) / 16, abs=0.01)
    sent = media.tts.chat_requests()[-1]
    assert sent.body["model"] == "kokoro" and sent.body["input"] == text


async def test_images_generate_and_edit_reach_the_image_backend(
        media: MediaBox, tmp_path: Path) -> None:
    async with media.client() as api:
        raw = await api.images.with_raw_response.generate(
            model="studio", prompt="a lighthouse at dusk", size="64x32", n=2,
            response_format="b64_json")
        result = raw.parse()
        assert raw.headers["x-mushishi-backend"] == "images"
        assert len(result.data or []) == 2
        image = base64.b64decode((result.data or [])[0].b64_json or "")
        assert image.startswith(b"\x89PNG") and image[16:24] == (64).to_bytes(4, "big") + \
            (32).to_bytes(4, "big")
        assert media.images.chat_requests()[-1].body["model"] == "sdxl-turbo"
        source = tmp_path / "source.png"
        source.write_bytes(image)
        edited = await api.images.edit(model="studio", image=source.open("rb"),
                                       prompt="add a moon", size="32x32")
    assert (edited.data or [])[0].b64_json
    sent = media.images.chat_requests()[-1]
    assert sent.path == "/v1/images/edits" and sent.body["model"] == "sdxl-turbo"
    assert sent.body["image"]["sha256"] == hashlib.sha256(image).hexdigest()


async def test_an_endpoint_the_profile_does_not_serve_is_404_with_the_sdk(
        media: MediaBox, tmp_path: Path) -> None:
    async with media.client() as api:
        with pytest.raises(openai.NotFoundError) as caught:
            await api.images.generate(model="voice", prompt="x")
    assert caught.value.code == "endpoint_unsupported"
    assert "'voice'" in caught.value.message
    assert caught.value.response.headers["x-mushishi-profile"] == "voice"
    assert media.images.chat_requests() == []


async def test_models_list_the_endpoints_each_profile_serves(media: MediaBox) -> None:
    async with media.client() as api:
        listed = {model.id: model for model in (await api.models.list()).data}
    assert set(listed) == {"voice", "studio", "private", "strictcpu"}
    # Responses are served wherever chat is (translated, services/router/responses.py).
    assert listed["voice"].endpoints == [  # type: ignore[attr-defined]
        "audio/speech", "audio/transcriptions", "audio/translations", "chat/completions",
        "completions", "embeddings", "responses"]
    assert listed["studio"].endpoints == [  # type: ignore[attr-defined]
        "chat/completions", "completions", "embeddings", "images/edits",
        "images/generations", "responses"]


async def test_rerank_passes_through_on_both_paths(tmp_path: Path) -> None:
    async with running_box(tmp_path, cpu_extra='endpoints = ["chat/completions", "rerank"]'
                           ) as box:
        async with httpx.AsyncClient(base_url=box.base_url, headers={
                "Authorization": "Bearer sk-test-personal"}) as client:
            for path in ("/v1/rerank", "/rerank"):
                response = await client.post(path, json={
                    "model": "private", "query": "capital of France", "top_n": 1,
                    "documents": ["Berlin is in Germany", "Paris is the capital of France"]})
                assert response.status_code == 200, response.text
                assert response.headers["x-mushishi-backend"] == "cpu"  # gpu: no rerank
                assert response.json()["results"] == [{"index": 1, "relevance_score": 3.0}]
        assert [r.path for r in box.cpu.chat_requests()] == ["/v1/rerank", "/v1/rerank"]
        assert box.gpu.chat_requests() == []


async def test_a_form_without_a_model_or_a_file_is_refused_before_any_backend(
        media: MediaBox) -> None:
    async with httpx.AsyncClient(base_url=media.box.base_url,
                                 headers={"Authorization": f"Bearer {MEDIA_KEY}"}) as client:
        no_model = await client.post("/v1/audio/transcriptions",
                                     files={"file": ("a.wav", make_wav(0.1))})
        no_file = await client.post("/v1/audio/transcriptions", data={"model": "voice"},
                                    files={"x": (None, "y")})
        not_form = await client.post("/v1/audio/transcriptions", json={"model": "voice"})
        truncated = await client.post(
            "/v1/audio/transcriptions", content=b"--b\r\nContent-Disposition: form-data; "
            b'name="model"\r\n\r\nvoice\r\n--b\r\nContent-Disposition: form-data; name="file";'
            b' filename="a.wav"\r\n\r\nRIFF',
            headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert no_model.status_code == 400 and "model" in no_model.json()["error"]["message"]
    assert no_file.status_code == 400 and "no file" in no_file.json()["error"]["message"]
    assert not_form.status_code == 415
    assert truncated.status_code == 400
    assert "closing boundary" in truncated.json()["error"]["message"]
    assert media.whisper.chat_requests() == [] and media.whisper_cpu.chat_requests() == []


async def test_an_upload_over_the_body_limit_is_413(tmp_path: Path) -> None:
    async with media_box(tmp_path, router_extra="max_body_bytes = 100000") as media, \
            httpx.AsyncClient(base_url=media.box.base_url,
                              headers={"Authorization": f"Bearer {MEDIA_KEY}"}) as client:
        declared = await client.post("/v1/audio/transcriptions", data={"model": "voice"},
                                     files={"file": ("a.wav", make_wav(4.0))})

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as read
            yield (b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nvoice\r\n"
                   b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\n")
            for _ in range(20):
                yield b"x" * 10000
        chunked = await client.post("/v1/audio/transcriptions", content=chunks(), headers={
            "Content-Type": "multipart/form-data; boundary=b"})
    assert declared.status_code == 413
    assert declared.json()["error"]["code"] == "request_too_large"
    assert chunked.status_code == 413, chunked.text
    assert "router.max_body_bytes" in json.loads(chunked.text)["error"]["message"]


VOICECLOUD = """
[profiles.voicecloud]
tier = "T2"
chain = ["whisper", "whisper-cpu", "groq"]
queue_timeout_s = 1
"""
GROQ_TRANSCRIBES = ('endpoints = ["chat/completions", "audio/transcriptions"]\n'
                    "budget = { audio_seconds_per_day = 3 }")


async def test_t1_transcription_never_reaches_the_cloud_when_the_speech_backends_are_down(
        tmp_path: Path) -> None:
    """T2 falls back to a cloud Whisper through the real egress, counted in audio seconds;
    T1 with the GPU-side or CPU-side speech backend down uses the other, and with both down
    queues, then answers sovereign_backends_unavailable: the cloud canary sees none of it."""
    async with media_box(tmp_path, real_egress=True, groq_extra=GROQ_TRANSCRIBES,
                         extra=f'"{sha("sk-test-voicecloud")}" = ["voicecloud"]\n',
                         tables=VOICECLOUD) as media:
        canary = media.box.cloud["groq"]
        audio = wav_file(tmp_path, 2.0)
        private = media.client(PRIVATE_VOICE_KEY)
        cloudy = media.client("sk-test-voicecloud")
        for down, answers in ((media.whisper, "whisper-cpu"), (media.whisper_cpu, "whisper")):
            await down.refuse()
            with audio.open("rb") as handle:
                raw = await private.audio.transcriptions.with_raw_response.create(
                    model="privatevoice", file=handle)
            assert raw.headers["x-mushishi-backend"] == answers
            await down.accept()
            await wait_for_up(media, down.name)
        await media.whisper.refuse()
        await media.whisper_cpu.refuse()
        with audio.open("rb") as handle, pytest.raises(openai.APIStatusError) as caught:
            await private.audio.transcriptions.create(model="privatevoice", file=handle)
        assert caught.value.status_code == 503
        assert caught.value.code == "sovereign_backends_unavailable"
        assert "after waiting 1s" in caught.value.message
        assert canary.chat_requests() == []  # the canary saw nothing of T1
        # T2 may leave the box: through the egress to the cloud Whisper, in audio seconds.
        with audio.open("rb") as handle:
            raw = await cloudy.audio.transcriptions.with_raw_response.create(
                model="voicecloud", file=handle)
        assert raw.headers["x-mushishi-backend"] == "groq"
        assert raw.parse().text.startswith("groq heard 2.00 seconds")
        sent = canary.authorized()[-1]
        assert sent.path == "/v1/audio/transcriptions"
        assert sent.body["file"]["sha256"] == hashlib.sha256(audio.read_bytes()).hexdigest()
        egress = media.box.egress_daemon
        assert egress is not None
        totals = egress.ledger.totals("groq")
        assert (totals.requests, totals.audio_seconds) == (1, 2.0)
        # 2 of 3 seconds used: one more passes, then the budget is spent.
        with audio.open("rb") as handle:
            await cloudy.audio.transcriptions.create(model="voicecloud", file=handle)
        with audio.open("rb") as handle, pytest.raises(openai.APIStatusError) as caught:
            await cloudy.audio.transcriptions.create(model="voicecloud", file=handle)
        assert caught.value.status_code == 429
        assert caught.value.code == "budget_exhausted"
        assert "groq: budget exhausted" in caught.value.message
        assert len(canary.authorized()) == 2
        assert egress.ledger.totals("groq").audio_seconds == 4.0
        groq = egress.status()["backends"]["groq"]
        assert (groq["audio_seconds_used"], groq["audio_seconds_limit"]) == (4.0, 3.0)
        await private.close()
        await cloudy.close()


async def wait_for_up(media: MediaBox, backend: str) -> None:
    await wait_for(lambda: media.box.router.state.verdict(backend).state == "up",
                   what=f"{backend} up again")


SPEAKCLOUD = """
[profiles.speakcloud]
tier = "T2"
chain = ["tts", "groq"]
"""


async def test_speech_from_a_cloud_fallback_streams_through_the_egress(tmp_path: Path) -> None:
    """T2 speech that falls to a cloud TTS comes back through the real egress piece by piece
    as the provider sends it: the first audio arrives at once, though the whole answer
    takes longer than the first-byte timeout (2 s here), and the request is counted."""
    async with media_box(tmp_path, real_egress=True,
                         groq_extra='endpoints = ["chat/completions", "audio/speech"]',
                         extra=f'"{sha("sk-test-speakcloud")}" = ["speakcloud"]\n',
                         tables=SPEAKCLOUD) as media:
        await media.tts.refuse()
        groq = media.box.cloud["groq"]
        groq.token_delay = 0.3  # between 8 KiB pieces: 8 pieces, about 2.4 s in all
        text = "x" * 64  # four seconds of tone: 64,044 bytes of WAV
        loop = asyncio.get_running_loop()
        started = loop.time()
        pieces: list[tuple[float, int]] = []
        async with media.client("sk-test-speakcloud") as api, \
                api.audio.speech.with_streaming_response.create(
                    model="speakcloud", voice="v", input=text,
                    response_format="wav") as response:
            assert response.headers["x-mushishi-backend"] == "groq"
            assert response.headers["content-type"] == "audio/wav"
            audio = b""
            async for piece in response.iter_bytes():
                pieces.append((loop.time() - started, len(piece)))
                audio += piece
        assert audio == make_wav(4.0, rate=8000)
        first, last = pieces[0][0], pieces[-1][0]
        assert first < 1.0, pieces  # not held until the provider finished
        assert last - first > 1.5, pieces
        assert groq.authorized()[-1].path == "/v1/audio/speech"
        egress = media.box.egress_daemon
        assert egress is not None
        assert egress.ledger.totals("groq").requests == 1
        # Speech as SSE (`stream_format: "sse"`) is not a chat stream either: relayed as
        # it arrives, the events intact.
        async with httpx.AsyncClient(base_url=media.box.base_url, timeout=30, headers={
                "Authorization": "Bearer sk-test-speakcloud"}) as client:
            started = loop.time()
            async with client.stream("POST", "/v1/audio/speech", json={
                    "model": "speakcloud", "voice": "v", "input": text,
                    "response_format": "wav", "stream_format": "sse"}) as answer:
                assert answer.status_code == 200
                assert answer.headers["content-type"].startswith("text/event-stream")
                arrivals, events = [], b""
                async for chunk in answer.aiter_bytes():
                    arrivals.append(loop.time() - started)
                    events += chunk
        deltas = [json.loads(line[6:]) for line in events.decode().splitlines()
                  if line.startswith("data: ")]
        assert deltas[-1]["type"] == "speech.audio.done"
        assert b"".join(base64.b64decode(d["audio"]) for d in deltas[:-1]) == \
            make_wav(4.0, rate=8000)
        assert arrivals[0] < 1.0 and arrivals[-1] - arrivals[0] > 1.5, arrivals
        assert egress.ledger.totals("groq").requests == 2
        # A provider that falls silent mid-answer for longer than stream_idle_timeout_s (2 s)
        # has its answer cut: the caller sees it end broken, not a short file as if whole.
        groq.token_delay = 3.0
        with pytest.raises((httpx.HTTPError, openai.APIError)):
            async with media.client("sk-test-speakcloud") as api, \
                    api.audio.speech.with_streaming_response.create(
                        model="speakcloud", voice="v", input=text,
                        response_format="wav") as response:
                await response.read()
        assert egress.ledger.totals("groq").requests == 3
        assert egress.status()["backends"]["groq"]["consecutive_failures"] == 1


async def test_speech_text_and_audio_never_reach_a_log(
        media: MediaBox, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The form's prompt, the audio and a backend error quoting the prompt stay out of the
    router's records, whether the hop fails, the form is bad or the answer is relayed."""
    import logging

    marker = "SPEECH-MARKER-91c2-never-in-a-log"
    caplog.set_level(logging.DEBUG)
    audio = tmp_path / "secret.wav"
    audio.write_bytes(make_wav(0.3) + marker.encode())
    media.whisper.fail_next(Fault.echo(500))
    async with media.client() as api:
        with audio.open("rb") as handle:
            raw = await api.audio.transcriptions.with_raw_response.create(
                model="voice", file=handle, prompt=marker)
        assert raw.headers["x-mushishi-backend"] == "whisper-cpu"
        media.whisper.fail_next(Fault.echo(400))  # the caller's own fault: relayed to them
        with audio.open("rb") as handle, pytest.raises(openai.BadRequestError) as caught:
            await api.audio.transcriptions.create(model="voice", file=handle, prompt=marker)
        assert marker in caught.value.message
        await api.audio.speech.create(model="voice", voice="v", input=marker,
                                      response_format="wav")
    async with httpx.AsyncClient(base_url=media.box.base_url,
                                 headers={"Authorization": f"Bearer {MEDIA_KEY}"}) as client:
        await client.post("/v1/audio/transcriptions", data={"model": "voice",
                                                            marker: "x" * 70000},
                          files={"file": ("a.wav", b"RIFF")})
    leaked = [record.getMessage() for record in caplog.records
              if marker in record.getMessage() or marker in repr(vars(record))]
    assert leaked == []
