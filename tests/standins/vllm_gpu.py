"""A stand-in for a vLLM GPU tenant: vLLM's OpenAI server and its Prometheus /metrics.

Run as a script (it is a tenant's `command`): `python vllm_gpu.py --port 8000 --model M`.
It serves /v1/models, /health, /v1/chat/completions (JSON, or SSE chunks in OpenAI's
format ending in `data: [DONE]`) and /metrics with `vllm:num_requests_running` and
`vllm:num_requests_waiting` as vLLM writes them. A loaded but idle server reports 0 and 0.

Holding a request in flight, for drain tests: `POST /standin/hold` makes every streamed
answer stop after its first chunk until `POST /standin/release`; `GET /standin/state`
tells how many requests are running and how many completed. Like vLLM's API server, it
only listens once the model is "loaded" (`--load-seconds`), and on SIGTERM it stops
accepting, lets running requests finish, then exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
import uuid

from aiohttp import web

STATE = web.AppKey("state", dict)
GATE = web.AppKey("gate", asyncio.Event)


def _chunk(model: str, request_id: str, delta: dict, finish: str | None) -> bytes:
    body = {"id": request_id, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    return f"data: {json.dumps(body)}\n\n".encode()


async def models(request: web.Request) -> web.Response:
    model = request.app[STATE]["model"]
    return web.json_response({"object": "list", "data": [{
        "id": model, "object": "model", "created": int(time.time()), "owned_by": "vllm",
        "root": model, "parent": None, "max_model_len": 32768}]})


async def health(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    model = state["model"]
    labels = f'engine="0",model_name="{model}"'
    text = (
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        f"vllm:num_requests_running{{{labels}}} {float(state['running'])}\n"
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
        "# TYPE vllm:num_requests_waiting gauge\n"
        f"vllm:num_requests_waiting{{{labels}}} {float(state['waiting'])}\n"
        "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        f"vllm:kv_cache_usage_perc{{{labels}}} {0.01 * state['running']}\n"
        "# HELP vllm:request_success_total Count of successfully processed requests.\n"
        "# TYPE vllm:request_success_total counter\n"
        f'vllm:request_success_total{{{labels},finished_reason="stop"}} '
        f"{float(state['completed'])}\n"
    )
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


async def chat(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    payload = await request.json()
    words = [f"word{i}" for i in range(int(payload.get("max_tokens") or state["tokens"]))]
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    model = state["model"]
    state["running"] += 1
    try:
        if not payload.get("stream"):
            text = " ".join(words)
            for _ in words:
                await asyncio.sleep(state["token_delay"])
            await request.app[GATE].wait()
            state["completed"] += 1
            return web.json_response({
                "id": request_id, "object": "chat.completion", "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": len(words),
                          "total_tokens": 5 + len(words)}})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        await response.write(_chunk(model, request_id, {"role": "assistant", "content": ""},
                                    None))
        for index, word in enumerate(words):
            if index == 1:
                await request.app[GATE].wait()  # held here while /standin/hold is on
            await response.write(_chunk(model, request_id, {"content": word + " "}, None))
            await asyncio.sleep(state["token_delay"])
        await response.write(_chunk(model, request_id, {}, "stop"))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        state["completed"] += 1
        print(f"completed {request_id} ({len(words)} tokens)", flush=True)
        return response
    finally:
        state["running"] -= 1


async def hold(request: web.Request) -> web.Response:
    request.app[GATE].clear()
    return web.json_response({"held": True})


async def release(request: web.Request) -> web.Response:
    request.app[GATE].set()
    return web.json_response({"held": False})


async def standin_state(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response({k: state[k] for k in ("running", "waiting", "completed")}
                             | {"held": not request.app[GATE].is_set()})


def build_app(model: str, tokens: int = 8, token_delay: float = 0.01) -> web.Application:
    """The stand-in's routes (importable for tests that run it in-process on port 0)."""
    app = web.Application()
    app[STATE] = {"model": model, "tokens": tokens, "token_delay": token_delay,
                  "running": 0, "waiting": 0, "completed": 0}
    gate = asyncio.Event()
    gate.set()
    app[GATE] = gate
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/standin/hold", hold)
    app.router.add_post("/standin/release", release)
    app.router.add_get("/standin/state", standin_state)
    return app


async def serve(args: argparse.Namespace) -> None:
    await asyncio.sleep(args.load_seconds)  # "loading the model": not listening yet
    runner = web.AppRunner(build_app(args.model, args.tokens, args.token_delay),
                           access_log=None, shutdown_timeout=args.shutdown_timeout)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    print(f"vllm stand-in serving {args.model} on {args.host}:{args.port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()  # stops listening, waits for running requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", default="standin-model")
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--token-delay", type=float, default=0.01)
    parser.add_argument("--load-seconds", type=float, default=0.0)
    parser.add_argument("--shutdown-timeout", type=float, default=60.0)
    asyncio.run(serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
