"""A stand-in OpenAI-compatible model server (the wire format vLLM and llama-server speak).

Started for real, on port 0 or a unix socket, with faults scripted per request:

    server = await OpenAIStandin(model="m").start()
    server.fail_next(Fault.status(503), Fault.hang())   # the next two requests
    server.fail_always(Fault.die_mid_stream())           # every request until cleared
    await server.refuse()  /  await server.accept()      # stop / resume listening (same port)

Every request is recorded (`server.requests`) with its path, headers and JSON body. Answers
are deterministic: `tokens` words "<name>-0 <name>-1 …", so a test can tell who answered.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Fault:
    """What to do to one request instead of answering it normally."""

    kind: str  # status | echo | hang | die_mid_stream | hang_mid_stream | error_event | close
    status: int = 500
    body: dict[str, Any] | None = None
    after_chunks: int = 2
    headers: dict[str, str] | None = None

    @classmethod
    def status_code(cls, status: int, message: str = "stand-in fault", code: Any = None,
                    headers: dict[str, str] | None = None) -> Fault:
        """Answer `status` with an OpenAI-shaped error body."""
        return cls("status", status, {"error": {"message": message, "type": "stand_in_error",
                                                "code": code if code is not None else status}},
                   headers=headers)

    @classmethod
    def echo(cls, status: int) -> Fault:
        """Answer `status` with an error whose message quotes the request's messages, as
        model servers do for a prompt they cannot take ("… in your messages: …")."""
        return cls("echo", status)

    @classmethod
    def error_event(cls, after_chunks: int = 1) -> Fault:
        """Stream `after_chunks` chunks, then an SSE `data: {"error": …}` event quoting the
        request's messages (vLLM's shape for an error after the stream began), and end."""
        return cls("error_event", after_chunks=after_chunks)

    @classmethod
    def hang(cls) -> Fault:
        """Accept the request and never answer."""
        return cls("hang")

    @classmethod
    def die_mid_stream(cls, after_chunks: int = 2) -> Fault:
        """Stream `after_chunks` chunks, then drop the connection (no [DONE])."""
        return cls("die_mid_stream", after_chunks=after_chunks)

    @classmethod
    def hang_mid_stream(cls, after_chunks: int = 1) -> Fault:
        """Stream `after_chunks` chunks, then go silent."""
        return cls("hang_mid_stream", after_chunks=after_chunks)

    @classmethod
    def close(cls) -> Fault:
        """Drop the connection before any byte of the answer."""
        return cls("close")


@dataclass
class Recorded:
    """One request the stand-in received."""

    path: str
    headers: dict[str, str]
    body: Any
    received: float = field(default_factory=time.time)


class OpenAIStandin:
    """An OpenAI-compatible server: chat/completions, completions, embeddings, responses
    (text only, as vLLM's), models, health, and vLLM's /metrics (vllm:num_requests_running,
    vllm:num_requests_waiting)."""

    def __init__(
        self,
        model: str = "stand-in-model",
        *,
        name: str = "standin",
        host: str = "127.0.0.1",
        port: int = 0,
        unix_path: str | None = None,
        tokens: int = 8,
        token_delay: float = 0.0,
        accept_any_model: bool = False,
        record_file: str | None = None,
        close_connections: bool = False,
    ) -> None:
        self.model = model
        self.name = name
        self.host = host
        self.port = port
        self.unix_path = unix_path
        self.tokens = tokens
        self.token_delay = token_delay
        self.accept_any_model = accept_any_model
        self.record_file = record_file
        self.close_connections = close_connections  # no keep-alive: every request reconnects
        self.requests: list[Recorded] = []
        self.running = 0
        self.waiting = 0
        self.loading = False  # llama.cpp-like: 503 "Loading model" while True
        # llama.cpp-like: /health unanswered while True, as a saturated llama-server's is
        # (its few HTTP threads all wait on completions) while it keeps generating.
        self.health_stalls = False
        self._faults: deque[Fault] = deque()
        self._always: Fault | None = None
        self._runner: web.AppRunner | None = None
        self._hung: set[asyncio.Task[Any]] = set()

    # -- control ------------------------------------------------------------------------
    def fail_next(self, *faults: Fault) -> None:
        """Apply these faults to the next requests, one each, in order."""
        self._faults.extend(faults)

    def fail_always(self, fault: Fault | None) -> None:
        """Apply `fault` to every request (None: answer normally again)."""
        self._always = fault

    def clear(self) -> None:
        """No faults, no records."""
        self._faults.clear()
        self._always = None
        self.requests.clear()

    @property
    def url(self) -> str:
        """The base URL a config names (`.../v1`, or unix:/path)."""
        if self.unix_path:
            return f"unix:{self.unix_path}"
        return f"http://{self.host}:{self.port}/v1"

    @property
    def origin(self) -> str:
        """http://host:port."""
        return f"http://{self.host}:{self.port}"

    def chat_requests(self) -> list[Recorded]:
        """Recorded inference requests (not probes)."""
        return [r for r in self.requests if r.path.startswith("/v1/") and r.path != "/v1/models"]

    # -- lifecycle ----------------------------------------------------------------------
    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024,
                              middlewares=[self._closing] if self.close_connections else [])
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_post("/v1/rerank", self._rerank)  # llama-server --reranking, Jina
        app.router.add_post("/rerank", self._rerank)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> OpenAIStandin:
        """Listen (again) and return self; port 0 picks a free port once, kept afterwards."""
        runner = web.AppRunner(self._app(), access_log=None, handler_cancellation=True,
                               shutdown_timeout=0.5)
        await runner.setup()
        site: web.BaseSite
        if self.unix_path:
            Path(self.unix_path).unlink(missing_ok=True)
            site = web.UnixSite(runner, self.unix_path)
        else:
            site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        await site.start()
        if not self.unix_path and self.port == 0:
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._runner = runner
        return self

    async def stop(self) -> None:
        """Stop listening and drop every connection."""
        for task in list(self._hung):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def refuse(self) -> None:
        """Like a dead process: connections are refused until accept()."""
        await self.stop()

    async def accept(self) -> None:
        """Listen again on the same port."""
        if self._runner is None:
            await self.start()

    # -- handlers -----------------------------------------------------------------------
    @web.middleware
    async def _closing(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as error:  # aiohttp answers with it: a 404 closes too
            error.force_close()
            raise
        response.force_close()
        return response

    async def _record(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        entry = Recorded(request.path, dict(request.headers), body)
        self.requests.append(entry)
        if self.record_file:
            with Path(self.record_file).open("a") as handle:
                handle.write(json.dumps({"path": entry.path, "headers": entry.headers,
                                         "body": entry.body}) + "\n")
        return body

    def _next_fault(self) -> Fault | None:
        if self._faults:
            return self._faults.popleft()
        return self._always

    async def _hang(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._hung.add(task)
        try:
            await asyncio.sleep(3600)
        finally:
            self._hung.discard(task)

    async def _pre(self, request: web.Request) -> tuple[Any, Fault | None, web.Response | None]:
        body = await self._record(request)
        fault = self._next_fault()
        if self.loading:
            return body, None, self._loading_response()
        if fault is not None and fault.kind == "status":
            return body, fault, web.json_response(fault.body, status=fault.status,
                                                  headers=fault.headers)
        if fault is not None and fault.kind == "echo":
            return body, fault, web.json_response({"error": {
                "message": f"cannot process the request: {_quoted(body)}",
                "type": "BadRequestError", "code": fault.status}}, status=fault.status)
        if fault is not None and fault.kind == "hang":
            await self._hang()
        if fault is not None and fault.kind == "close":
            assert request.transport is not None
            request.transport.close()
            raise ConnectionResetError("stand-in closed the connection")
        if not isinstance(body, dict):
            return body, None, web.json_response(
                {"error": {"message": "body must be a JSON object", "type": "BadRequestError",
                           "code": 400}}, status=400)
        problem = self._invalid(request.path, body)
        if problem:  # what vLLM's request validation refuses with a 400
            return body, None, web.json_response(
                {"error": {"message": problem, "type": "BadRequestError", "code": 400}},
                status=400)
        if not self.accept_any_model and body.get("model") != self.model:
            return body, None, web.json_response(
                {"error": {"message": f"The model `{body.get('model')}` does not exist.",
                           "type": "NotFoundError", "code": 404}}, status=404)
        return body, fault, None

    @staticmethod
    def _invalid(path: str, body: dict[str, Any]) -> str:
        if path.endswith("/chat/completions"):
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages or not all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
                return "messages: each message needs a role"
            tools = body.get("tools")
            if tools is not None and not (isinstance(tools, list) and all(
                    isinstance(t, dict) and isinstance(t.get("function"), dict)
                    and isinstance(t["function"].get("name"), str) for t in tools)):
                return "tools: each tool needs a function with a name"
        if path.endswith("/completions") and not path.endswith("/chat/completions") and \
                not isinstance(body.get("prompt"), str | list):
            return "prompt: a string or a list is required"
        if path.endswith(("/embeddings", "/responses")) and \
                not isinstance(body.get("input"), str | list):
            return "input: a string or a list is required"
        return ""

    def _loading_response(self) -> web.Response:
        return web.json_response({"error": {"code": 503, "message": "Loading model",
                                            "type": "unavailable_error"}}, status=503)

    def _words(self) -> list[str]:
        return [f"{self.name}-{i}" for i in range(self.tokens)]

    @staticmethod
    def _prompt_tokens(body: dict[str, Any]) -> int:
        return max(1, len(json.dumps(body.get("messages") or body.get("prompt") or
                                     body.get("input") or "")) // 4)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, fault, early = await self._pre(request)
        if early is not None:
            return early
        self.running += 1
        try:
            words = self._words()
            tools = body.get("tools")
            use_tool = bool(tools) and body.get("tool_choice") != "none"
            if body.get("stream"):
                return await self._stream_chat(request, body, words, fault, use_tool)
            if self.token_delay:
                await asyncio.sleep(self.token_delay * len(words))
            message: dict[str, Any] = {"role": "assistant", "content": " ".join(words)}
            finish = "stop"
            if use_tool:
                message = {"role": "assistant", "content": None, "tool_calls": [{
                    "id": "call_standin_0", "type": "function", "function": {
                        "name": tools[0]["function"]["name"],
                        "arguments": json.dumps({"city": "Paris"})}}]}
                finish = "tool_calls"
            prompt = self._prompt_tokens(body)
            return web.json_response({
                "id": "chatcmpl-standin", "object": "chat.completion",
                "created": int(time.time()), "model": body["model"],
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": finish}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": len(words),
                          "total_tokens": prompt + len(words)}})
        finally:
            self.running -= 1

    async def _stream_chat(self, request: web.Request, body: dict[str, Any], words: list[str],
                           fault: Fault | None, use_tool: bool) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            return b"data: " + json.dumps({
                "id": "chatcmpl-standin", "object": "chat.completion.chunk", "created": created,
                "model": body["model"], "choices": [{"index": 0, "delta": delta,
                                                     "logprobs": None,
                                                     "finish_reason": finish}]}).encode() + b"\n\n"

        pieces = [chunk({"role": "assistant", "content": ""})]
        if use_tool:
            name = body["tools"][0]["function"]["name"]
            pieces.append(chunk({"tool_calls": [{"index": 0, "id": "call_standin_0",
                                                 "type": "function", "function": {
                                                     "name": name, "arguments": ""}}]}))
            pieces += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
                       for part in ('{"city": ', '"Paris"}')]
            pieces.append(chunk({}, "tool_calls"))
        else:
            pieces += [chunk({"content": (" " if i else "") + word})
                       for i, word in enumerate(words)]
            pieces.append(chunk({}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            prompt = self._prompt_tokens(body)
            pieces.append(b"data: " + json.dumps({
                "id": "chatcmpl-standin", "object": "chat.completion.chunk", "created": created,
                "model": body["model"], "choices": [], "usage": {
                    "prompt_tokens": prompt, "completion_tokens": len(words),
                    "total_tokens": prompt + len(words)}}).encode() + b"\n\n")
        pieces.append(b"data: [DONE]\n\n")
        if fault is not None and fault.kind == "error_event":
            pieces[fault.after_chunks:] = [b"data: " + json.dumps({"object": "error", "error": {
                "message": f"generation failed for {_quoted(body)}",
                "type": "InternalServerError", "code": 500}}).encode() + b"\n\n"]
        return await self._send_pieces(request, response, pieces, fault)

    async def _send_pieces(self, request: web.Request, response: web.StreamResponse,
                           pieces: list[bytes], fault: Fault | None) -> web.StreamResponse:
        for index, piece in enumerate(pieces):
            if fault is not None and fault.kind in ("die_mid_stream", "hang_mid_stream") \
                    and index == fault.after_chunks:
                if fault.kind == "hang_mid_stream":
                    await self._hang()
                assert request.transport is not None
                request.transport.abort()
                return response
            await response.write(piece)
            if self.token_delay:
                await asyncio.sleep(self.token_delay)
        await response.write_eof()
        return response

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body, fault, early = await self._pre(request)
        if early is not None:
            return early
        words = self._words()
        if body.get("stream"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            pieces = [b"data: " + json.dumps({
                "id": "cmpl-standin", "object": "text_completion", "model": body["model"],
                "choices": [{"index": 0, "text": (" " if i else "") + w,
                             "finish_reason": None}]}).encode() + b"\n\n"
                for i, w in enumerate(words)]
            pieces.append(b"data: [DONE]\n\n")
            return await self._send_pieces(request, response, pieces, fault)
        prompt = self._prompt_tokens(body)
        return web.json_response({
            "id": "cmpl-standin", "object": "text_completion", "created": int(time.time()),
            "model": body["model"], "choices": [{"index": 0, "text": " ".join(words),
                                                 "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": len(words),
                      "total_tokens": prompt + len(words)}})

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body, _, early = await self._pre(request)
        if early is not None:
            return early
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        prompt = self._prompt_tokens(body)
        return web.json_response({
            "object": "list", "model": body["model"],
            "data": [{"object": "embedding", "index": i,
                      "embedding": [round(0.1 * (i + 1) * k, 3) for k in range(8)]}
                     for i in range(len(items))],
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt}})

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/responses: the words as one output_text message, or streamed as the
        Responses API's events (`event:` + `data:`, no [DONE])."""
        body, fault, early = await self._pre(request)
        if early is not None:
            return early
        words = self._words()
        text = " ".join(words)
        prompt = self._prompt_tokens(body)
        created = int(time.time())

        def response(status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
            return {"id": "resp_standin", "object": "response", "created_at": created,
                    "status": status, "model": body["model"], "output": output,
                    "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
                    "error": None, "incomplete_details": None,
                    "usage": None if status != "completed" else {
                        "input_tokens": prompt, "output_tokens": len(words),
                        "total_tokens": prompt + len(words),
                        "input_tokens_details": {"cached_tokens": 0},
                        "output_tokens_details": {"reasoning_tokens": 0}}}

        part = {"type": "output_text", "text": text, "annotations": []}
        message = {"id": "msg_standin", "type": "message", "role": "assistant",
                   "status": "completed", "content": [part]}
        if not body.get("stream"):
            return web.json_response(response("completed", [message]))
        response_stream = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response_stream.prepare(request)
        where = {"item_id": "msg_standin", "output_index": 0}
        events: list[dict[str, Any]] = [
            {"type": "response.created", "response": response("in_progress", [])},
            {"type": "response.output_item.added", "output_index": 0,
             "item": {**message, "status": "in_progress", "content": []}},
            {"type": "response.content_part.added", **where, "content_index": 0,
             "part": {**part, "text": ""}}]
        events += [{"type": "response.output_text.delta", **where, "content_index": 0,
                    "delta": (" " if i else "") + word} for i, word in enumerate(words)]
        events += [{"type": "response.output_text.done", **where, "content_index": 0,
                    "text": text},
                   {"type": "response.content_part.done", **where, "content_index": 0,
                    "part": part},
                   {"type": "response.output_item.done", "output_index": 0, "item": message},
                   {"type": "response.completed", "response": response("completed", [message])}]
        pieces = [f"event: {event['type']}\ndata: "
                  f"{json.dumps({**event, 'sequence_number': number})}\n\n".encode()
                  for number, event in enumerate(events)]
        return await self._send_pieces(request, response_stream, pieces, fault)
    async def _rerank(self, request: web.Request) -> web.StreamResponse:
        """llama-server's /v1/rerank answer: documents scored by words shared with the
        query."""
        body, _, early = await self._pre(request)
        if early is not None:
            return early
        query, documents = body.get("query"), body.get("documents")
        if not isinstance(query, str) or not isinstance(documents, list):
            return web.json_response({"error": {"message": "query and documents are required",
                                                "type": "invalid_request_error"}}, status=400)
        words = set(query.lower().split())
        results = [{"index": i, "relevance_score": float(len(words & set(str(d).lower().split())))}
                   for i, d in enumerate(documents)]
        results.sort(key=lambda r: -r["relevance_score"])
        top = body.get("top_n")
        tokens = len(query.split()) + sum(len(str(d).split()) for d in documents)
        return web.json_response({"model": body["model"], "object": "list",
                                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                                  "results": results[:top] if isinstance(top, int) else results})

    async def _models(self, request: web.Request) -> web.Response:
        if self.loading:
            return self._loading_response()
        return web.json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "created": 0, "owned_by": self.name}]})

    async def _health(self, request: web.Request) -> web.Response:
        self.requests.append(Recorded(request.path, dict(request.headers), None))
        if self.health_stalls:
            await self._hang()
        if self.loading:
            return self._loading_response()
        return web.json_response({"status": "ok"})

    async def _metrics(self, request: web.Request) -> web.Response:
        text = (
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f'vllm:num_requests_running{{model_name="{self.model}"}} {float(self.running)}\n'
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f'vllm:num_requests_waiting{{model_name="{self.model}"}} {float(self.waiting)}\n'
        )
        return web.Response(text=text, content_type="text/plain")


async def serve_forever(server: OpenAIStandin) -> None:
    """Run a stand-in until SIGTERM/SIGINT (for the sandbox and the benchmarks)."""
    import signal

    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"listening {server.url}", flush=True)
    await stop.wait()
    await server.stop()


def _quoted(body: Any) -> str:
    """What a model server's error quotes of a request: its messages or prompt, verbatim."""
    if not isinstance(body, dict):
        return repr(body)
    return json.dumps(body.get("messages") or body.get("prompt") or body.get("input"))
