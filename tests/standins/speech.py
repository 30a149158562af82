"""Stand-ins for speech servers: a Whisper-style speech-to-text server and a text-to-speech
server, speaking OpenAI's audio wire format as faster-whisper-server/speaches, whisper.cpp's
server and Kokoro-FastAPI do. They are STAND-INS (no model runs here): the "transcript" says
what arrived (the WAV's duration, the upload's size and sha256), so a test can tell that the
file reached the server whole; the "speech" is a generated sine tone.

    WhisperStandin: POST /v1/audio/transcriptions and /v1/audio/translations, multipart
        (file, model, response_format json|text|verbose_json|srt|vtt, language, prompt,
        temperature, stream); stream=true answers SSE transcript.text.delta /
        transcript.text.done events, as OpenAI does.
    TtsStandin: POST /v1/audio/speech, JSON (model, input, voice, response_format wav|pcm,
        speed, stream_format audio|sse); the audio is streamed in pieces with its content
        type, or as SSE speech.audio.delta events (base64) and a speech.audio.done.

Both inherit the OpenAI stand-in's lifecycle, /health, /v1/models, recorded requests and
scripted faults (`fail_next(Fault.status_code(503))` …). `python -m tests.standins.speech
whisper|tts PORT MODEL` runs one until SIGTERM (benchmarks).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import math
import struct
import sys
import wave
from typing import Any

from aiohttp import BodyPartReader, web

from tests.standins.openai_server import Fault, OpenAIStandin, Recorded, serve_forever

__all__ = ["Fault", "TtsStandin", "WhisperStandin", "make_wav"]


def make_wav(seconds: float, *, rate: int = 16000, tone_hz: float = 440.0) -> bytes:
    """A real mono 16-bit PCM WAV file of `seconds` of a sine tone."""
    frames = int(seconds * rate)
    samples = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * tone_hz * i / rate)))
                       for i in range(frames))
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples)
    return buffer.getvalue()


def _wav_seconds(head: bytes) -> float | None:
    """The duration a WAV header announces (None when it is not a WAV)."""
    if len(head) < 44 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    channels, rate = struct.unpack("<HI", head[22:28])
    bits = struct.unpack("<H", head[34:36])[0]
    position = 12
    while position + 8 <= len(head):
        chunk, size = head[position:position + 4], struct.unpack("<I",
                                                                 head[position + 4:position + 8])[0]
        if chunk == b"data":
            return size / (rate * channels * bits / 8)
        position += 8 + size
    return None


class WhisperStandin(OpenAIStandin):
    """A Whisper-style transcription server (stand-in)."""

    def __init__(self, model: str = "whisper-standin", **kwargs: Any) -> None:
        kwargs.setdefault("name", "whisper")
        super().__init__(model, **kwargs)

    def _app(self) -> web.Application:
        app = super()._app()
        app.router.add_post("/v1/audio/transcriptions", self._transcribe)
        app.router.add_post("/v1/audio/translations", self._transcribe)
        return app

    async def _read_form(self, request: web.Request) -> dict[str, Any]:
        """The form's fields; a file part is summarised (size, sha256, WAV duration), read
        as it streams, never held whole."""
        fields: dict[str, Any] = {}
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            assert isinstance(part, BodyPartReader), "nested multipart is not a form"
            name = part.name or ""
            if part.filename is None:
                fields[name] = (await part.read()).decode()
                continue
            digest, size, head = hashlib.sha256(), 0, b""
            while chunk := await part.read_chunk(256 * 1024):
                digest.update(chunk)
                size += len(chunk)
                if len(head) < 4096:
                    head += chunk[:4096 - len(head)]
            fields[name] = {"filename": part.filename, "bytes": size,
                            "sha256": digest.hexdigest(), "seconds": _wav_seconds(head)}
        return fields

    async def _transcribe(self, request: web.Request) -> web.StreamResponse:
        fields = await self._read_form(request)
        self.requests.append(Recorded(request.path, dict(request.headers), fields))
        fault = self._next_fault()
        if fault is not None and fault.kind == "status":
            return web.json_response(fault.body, status=fault.status)
        if fault is not None and fault.kind == "echo":  # quoting the request, as servers do
            return web.json_response({"error": {
                "message": f"cannot transcribe with prompt {fields.get('prompt')!r}",
                "type": "server_error", "code": fault.status}}, status=fault.status)
        if fault is not None and fault.kind == "close":
            assert request.transport is not None
            request.transport.close()
            raise ConnectionResetError("stand-in closed the connection")
        if fields.get("model") != self.model:
            return web.json_response({"error": {
                "message": f"model {fields.get('model')!r} is not loaded", "type":
                "invalid_request_error", "code": "model_not_found"}}, status=404)
        audio = fields.get("file")
        if not isinstance(audio, dict):
            return web.json_response({"error": {"message": "file is required", "type":
                                                "invalid_request_error"}}, status=400)
        seconds = audio["seconds"] or 0.0
        task = "translate" if request.path.endswith("translations") else "transcribe"
        text = (f"{self.name} heard {seconds:.2f} seconds in {audio['bytes']} bytes "
                f"sha256 {audio['sha256'][:16]}")
        if fields.get("stream") == "true":
            return await self._stream(request, text)
        kind = fields.get("response_format", "json")
        if kind == "text":
            return web.Response(text=text + "\n", content_type="text/plain")
        if kind in ("srt", "vtt"):
            end = _timestamp(seconds, "," if kind == "srt" else ".")
            start = _timestamp(0.0, "," if kind == "srt" else ".")
            body = (f"1\n{start} --> {end}\n{text}\n" if kind == "srt" else
                    f"WEBVTT\n\n{start} --> {end}\n{text}\n")
            return web.Response(text=body, content_type="text/plain")
        if kind == "verbose_json":
            return web.json_response({
                "task": task, "language": fields.get("language", "english"),
                "duration": seconds, "text": text,
                "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": seconds, "text": text,
                              "tokens": [1, 2, 3], "temperature": 0.0, "avg_logprob": -0.1,
                              "compression_ratio": 1.0, "no_speech_prob": 0.0}]})
        if kind != "json":
            return web.json_response({"error": {"message": f"response_format {kind!r} is not "
                                                "supported", "type": "invalid_request_error"}},
                                     status=400)
        return web.json_response({"text": text, "usage": {"type": "duration",
                                                          "seconds": math.ceil(seconds)}})

    async def _stream(self, request: web.Request, text: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        for word in text.split(" "):
            event = {"type": "transcript.text.delta", "delta": word + " "}
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
            await asyncio.sleep(self.token_delay)
        done = {"type": "transcript.text.done", "text": text,
                "usage": {"type": "tokens", "input_tokens": 10, "output_tokens": 5,
                          "total_tokens": 15}}
        await response.write(f"data: {json.dumps(done)}\n\n".encode())
        await response.write_eof()
        return response


def _timestamp(seconds: float, comma: str) -> str:
    whole = int(seconds)
    millis = min(999, round((seconds - whole) * 1000))
    return f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}{comma}{millis:03d}"


class TtsStandin(OpenAIStandin):
    """A text-to-speech server (stand-in): one second of tone per 16 characters of input."""

    def __init__(self, model: str = "tts-standin", *, piece_bytes: int = 8192,
                 **kwargs: Any) -> None:
        kwargs.setdefault("name", "tts")
        super().__init__(model, **kwargs)
        self.piece_bytes = piece_bytes

    def _app(self) -> web.Application:
        app = super()._app()
        app.router.add_post("/v1/audio/speech", self._speech)
        return app

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        body, _, early = await self._pre(request)
        if early is not None:
            return early
        if not isinstance(body.get("input"), str) or not body.get("voice"):
            return web.json_response({"error": {"message": "input and voice are required",
                                                "type": "invalid_request_error"}}, status=400)
        kind = body.get("response_format", "wav")
        if kind not in ("wav", "pcm"):
            return web.json_response({"error": {"message": f"response_format {kind!r} is not "
                                                "supported by this server (wav, pcm)",
                                                "type": "invalid_request_error"}}, status=400)
        audio = make_wav(max(0.25, len(body["input"]) / 16), rate=8000)
        if kind == "pcm":
            audio = audio[44:]
        if body.get("stream_format") == "sse":  # OpenAI's speech events, audio in base64
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for start in range(0, len(audio), self.piece_bytes):
                piece = base64.b64encode(audio[start:start + self.piece_bytes]).decode()
                await response.write(b"data: " + json.dumps(
                    {"type": "speech.audio.delta", "audio": piece}).encode() + b"\n\n")
                await asyncio.sleep(self.token_delay)
            await response.write(b"data: " + json.dumps({"type": "speech.audio.done", "usage": {
                "input_tokens": len(body["input"]) // 4, "output_tokens": len(audio) // 320,
                "total_tokens": len(body["input"]) // 4 + len(audio) // 320}}).encode()
                + b"\n\n")
            await response.write_eof()
            return response
        response = web.StreamResponse(headers={
            "Content-Type": "audio/wav" if kind == "wav" else "audio/pcm"})
        await response.prepare(request)
        for start in range(0, len(audio), self.piece_bytes):
            await response.write(audio[start:start + self.piece_bytes])
            await asyncio.sleep(self.token_delay)
        await response.write_eof()
        return response


if __name__ == "__main__":
    kind, port, model = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    server = (WhisperStandin if kind == "whisper" else TtsStandin)(model, port=port)
    asyncio.run(serve_forever(server))
