"""A STAND-IN for ComfyUI (no model runs here) speaking its real API: POST /prompt, GET /queue,
POST /queue (`delete`, `clear`), POST /interrupt, GET /history and /history/{prompt_id},
GET /view, GET /system_stats, and the /ws websocket with ComfyUI's progress messages.

Run as a script (a tenant's `command`): `python comfyui.py --port 8188`, or in-process with
`build_app()` on port 0. A queued prompt runs for `--prompt-seconds` (or its
`extra_data.seconds`); /queue lists it under `queue_running` while it runs and under
`queue_pending` while it waits, in ComfyUI's [number, prompt_id, prompt, extra_data,
outputs_to_execute] shape. While it runs, the client that queued it (`client_id`, the
`clientId` of its /ws) gets ComfyUI's messages: `status` (queue_remaining), then
`execution_start`, `execution_cached`, `executing` per node, `progress` (value/max, for a
KSampler's `steps`), `executed` (a SaveImage's images), `executing` with `node: null` and
`execution_success`; a node of class_type `StandinFail` ends the run with
`execution_error` instead. POST /interrupt with `{"prompt_id": id}` stops that prompt
if it is the one running (current ComfyUI; without a body, whatever runs): the run ends
with `execution_interrupted` and an "error" history entry; every interrupt is recorded
(`interrupts`: the prompt id asked for, or None). POST /queue `{"delete": [ids]}` drops
pending prompts (never the running one; `deleted` records those dropped), `{"clear":
true}` every pending one. /prompt takes the caller's `prompt_id`, as ComfyUI does, and
answers `answer_delay` seconds after queueing (0; a test sets it). /prompt refuses (400,
`node_errors`) a node whose inputs are not an object or which names an unknown node.
Each "image" is a real PNG of the EmptyLatentImage's width x height, one per batch_size,
in one colour derived from the CLIPTextEncode texts and the KSampler seed (`colour()`),
so a test can tell what the workflow was filled with.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import signal
import struct
import sys
import time
import uuid
import zlib
from typing import Any

from aiohttp import WSMsgType, web

QUEUE = web.AppKey("queue", dict)


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A real PNG of one colour."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    row = b"\x00" + bytes(rgb) * width
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(row * height)) + chunk(b"IEND", b""))


def colour(texts: list[str], seed: int) -> tuple[int, int, int]:
    """The colour of a run's images: from its prompt texts (in node order) and seed."""
    digest = hashlib.sha256(json.dumps([texts, seed]).encode()).digest()
    return digest[0], digest[1], digest[2]


def _nodes(graph: dict[str, Any], class_type: str) -> list[tuple[str, dict[str, Any]]]:
    return [(node_id, node) for node_id, node in graph.items()
            if isinstance(node, dict) and node.get("class_type") == class_type]


def _node_errors(graph: Any) -> dict[str, Any]:
    if not isinstance(graph, dict) or not graph:
        return {"": {"errors": [{"type": "prompt_no_outputs"}]}}
    errors: dict[str, Any] = {}
    for node_id, node in graph.items():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict) or not isinstance(node.get("class_type"), str):
            errors[node_id] = {"errors": [{"type": "invalid_node", "message": "bad node"}],
                               "class_type": None}
            continue
        for name, value in inputs.items():
            if isinstance(value, list) and value and str(value[0]) not in graph:
                errors[node_id] = {"errors": [{"type": "missing_node", "message":
                                               f"input {name} names no node"}],
                                   "class_type": node["class_type"]}
    return errors


async def _send(queue: dict[str, Any], client_id: str | None, kind: str,
                data: dict[str, Any]) -> None:
    targets = [queue["sockets"][client_id]] if client_id in queue["sockets"] else \
        list(queue["sockets"].values()) if client_id is None else []
    for socket in targets:
        if not socket.closed:
            await socket.send_str(json.dumps({"type": kind, "data": data}))


async def _status(queue: dict[str, Any], client_id: str | None = None) -> None:
    remaining = len(queue["pending"]) + len(queue["running"])
    await _send(queue, client_id, "status",
                {"status": {"exec_info": {"queue_remaining": remaining}}})


async def _execute(queue: dict[str, Any], item: list[Any]) -> None:
    """Run one prompt: its messages, its images and its history entry."""
    number, prompt_id, graph, extra_data, _ = item
    client_id = extra_data.get("client_id")
    seconds = float(extra_data.get("seconds", queue["seconds"]))
    started = int(time.time() * 1000)
    messages: list[list[Any]] = []

    async def say(kind: str, data: dict[str, Any]) -> None:
        await _send(queue, client_id, kind, {**data, "prompt_id": prompt_id})
        if kind.startswith("execution_"):
            messages.append([kind, {**data, "prompt_id": prompt_id, "timestamp": started}])

    await say("execution_start", {"timestamp": started})
    await say("execution_cached", {"nodes": [], "timestamp": started})
    outputs: dict[str, Any] = {}
    texts = [str(node["inputs"].get("text", "")) for _, node in
             _nodes(graph, "CLIPTextEncode")]
    samplers = _nodes(graph, "KSampler")
    seed = int(samplers[0][1]["inputs"].get("seed", 0)) if samplers else 0
    latents = _nodes(graph, "EmptyLatentImage")
    size = latents[0][1]["inputs"] if latents else {}
    width, height = int(size.get("width", 64)), int(size.get("height", 64))
    batch = int(size.get("batch_size", 1))
    steps = max(1, min(int(samplers[0][1]["inputs"].get("steps", 4)), 50)) if samplers else 1
    failed = False
    for node_id, node in graph.items():
        await say("executing", {"node": node_id, "display_node": node_id})
        if node["class_type"] == "StandinFail":
            await say("execution_error", {
                "node_id": node_id, "node_type": "StandinFail", "executed": [],
                "exception_message": f"stand-in failure for {texts!r}",
                "exception_type": "RuntimeError", "traceback": [], "current_inputs": {},
                "current_outputs": {}})
            failed = True
            break
        if node["class_type"] == "KSampler":
            for step in range(1, steps + 1):
                step_ends = time.monotonic() + seconds / steps
                while queue["interrupting"] is not item and time.monotonic() < step_ends:
                    await asyncio.sleep(min(0.05, max(0.0, step_ends - time.monotonic())))
                if queue["interrupting"] is item:
                    await say("execution_interrupted", {
                        "node_id": node_id, "node_type": "KSampler", "executed": []})
                    failed = True
                    break
                await say("progress", {"value": step, "max": steps, "node": node_id})
            if failed:
                break
        if node["class_type"] in ("SaveImage", "PreviewImage"):
            kind = "output" if node["class_type"] == "SaveImage" else "temp"
            images = []
            for _ in range(batch):
                queue["counter"] += 1
                filename = f"{node['inputs'].get('filename_prefix', 'ComfyUI')}_" \
                           f"{queue['counter']:05}_.png"
                queue["files"][(filename, "", kind)] = png(width, height, colour(texts, seed))
                images.append({"filename": filename, "subfolder": "", "type": kind})
            outputs[node_id] = {"images": images}
            await say("executed", {"node": node_id, "display_node": node_id,
                                   "output": {"images": images}})
    if not failed:
        await say("executing", {"node": None})
        await say("execution_success", {"timestamp": int(time.time() * 1000)})
    queue["history"][prompt_id] = {
        "prompt": [number, prompt_id, graph, extra_data, list(outputs)],
        "outputs": outputs,
        "status": {"status_str": "error" if failed else "success", "completed": not failed,
                   "messages": messages},
        "meta": {node_id: {"node_id": node_id, "display_node": node_id}
                 for node_id in outputs}}


async def _worker(app: web.Application) -> None:
    queue = app[QUEUE]
    while True:
        item = await queue["incoming"].get()
        if item not in queue["pending"]:
            continue  # deleted while it waited
        queue["pending"].remove(item)
        queue["running"].append(item)
        await _status(queue)
        try:
            await _execute(queue, item)
        finally:
            queue["running"].remove(item)
            queue["interrupting"] = None
            queue["done"] += 1
            await _status(queue)


async def queue_view(request: web.Request) -> web.Response:
    queue = request.app[QUEUE]
    return web.json_response({"queue_running": queue["running"],
                              "queue_pending": queue["pending"]})


async def queue_change(request: web.Request) -> web.Response:
    """ComfyUI's POST /queue: `delete` pending prompts by id, or `clear` every pending one."""
    queue = request.app[QUEUE]
    payload = await request.json()
    if payload.get("clear"):
        queue["pending"].clear()
    for prompt_id in payload.get("delete", []):
        kept = [item for item in queue["pending"] if item[1] != prompt_id]
        if len(kept) < len(queue["pending"]):
            queue["deleted"].append(prompt_id)  # only what was dropped
        queue["pending"][:] = kept
    return web.Response(status=200)


async def interrupt(request: web.Request) -> web.Response:
    """ComfyUI's POST /interrupt: the running prompt, or only `prompt_id` if it is the one
    running."""
    queue = request.app[QUEUE]
    try:
        payload = await request.json()
    except ValueError:
        payload = {}
    prompt_id = payload.get("prompt_id") if isinstance(payload, dict) else None
    queue["interrupts"].append(prompt_id)
    for item in queue["running"]:
        if prompt_id is None or item[1] == prompt_id:
            queue["interrupting"] = item
    return web.Response(status=200)


async def prompt(request: web.Request) -> web.Response:
    queue = request.app[QUEUE]
    payload = await request.json()
    graph = payload.get("prompt")
    errors = _node_errors(graph)
    if errors:
        return web.json_response({"error": {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation", "details": "",
            "extra_info": {}}, "node_errors": errors}, status=400)
    queue["number"] += 1
    prompt_id = str(payload.get("prompt_id") or uuid.uuid4())  # ComfyUI takes the caller's
    extra_data = dict(payload.get("extra_data", {}))
    if "client_id" in payload:
        extra_data["client_id"] = payload["client_id"]
    item = [queue["number"], prompt_id, graph, extra_data, []]
    queue["pending"].append(item)
    queue["incoming"].put_nowait(item)
    await asyncio.sleep(queue["answer_delay"])  # queued; the answer is late (tests set it)
    return web.json_response({"prompt_id": prompt_id, "number": queue["number"],
                              "node_errors": {}})


async def history(request: web.Request) -> web.Response:
    entries = request.app[QUEUE]["history"]
    prompt_id = request.match_info.get("prompt_id")
    if prompt_id is None:
        return web.json_response(entries)
    return web.json_response({prompt_id: entries[prompt_id]} if prompt_id in entries else {})


async def view(request: web.Request) -> web.Response:
    files = request.app[QUEUE]["files"]
    key = (request.query.get("filename", ""), request.query.get("subfolder", ""),
           request.query.get("type", "output"))
    if key not in files:
        return web.Response(status=404)
    return web.Response(body=files[key], content_type="image/png")


async def websocket(request: web.Request) -> web.WebSocketResponse:
    queue = request.app[QUEUE]
    client_id = request.query.get("clientId") or uuid.uuid4().hex
    socket = web.WebSocketResponse()
    await socket.prepare(request)
    queue["sockets"][client_id] = socket
    queue["clients"].append(client_id)
    await _status(queue, client_id)
    try:
        async for message in socket:
            if message.type == WSMsgType.ERROR:
                break
    finally:
        if queue["sockets"].get(client_id) is socket:
            del queue["sockets"][client_id]
    return socket


async def system_stats(request: web.Request) -> web.Response:
    return web.json_response({
        "system": {"os": "posix", "python_version": sys.version.split()[0],
                   "embedded_python": False, "comfyui_version": "standin"},
        "devices": [{"name": "cuda:0 stand-in", "type": "cuda", "index": 0,
                     "vram_total": 34_190_000_000, "vram_free": 20_000_000_000}]})


def build_app(seconds: float = 1.0) -> web.Application:
    """The stand-in's routes (importable for in-process tests on port 0)."""
    app = web.Application()
    app[QUEUE] = {"running": [], "pending": [], "incoming": asyncio.Queue(), "number": 0,
                  "done": 0, "seconds": seconds, "history": {}, "files": {}, "counter": 0,
                  "sockets": {}, "clients": [], "interrupting": None,
                  "interrupts": [], "deleted": [], "answer_delay": 0.0}

    async def worker_ctx(app: web.Application):
        task = asyncio.create_task(_worker(app))
        yield
        task.cancel()
        for socket in list(app[QUEUE]["sockets"].values()):
            await socket.close()

    app.cleanup_ctx.append(worker_ctx)
    app.router.add_get("/queue", queue_view)
    app.router.add_post("/queue", queue_change)
    app.router.add_post("/interrupt", interrupt)
    app.router.add_post("/prompt", prompt)
    app.router.add_get("/history", history)
    app.router.add_get("/history/{prompt_id}", history)
    app.router.add_get("/view", view)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/system_stats", system_stats)
    return app


async def serve(args: argparse.Namespace) -> None:
    runner = web.AppRunner(build_app(args.prompt_seconds), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    print(f"comfyui stand-in on {args.host}:{args.port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--prompt-seconds", type=float, default=1.0)
    asyncio.run(serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
