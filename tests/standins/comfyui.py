"""A stand-in for ComfyUI: GET /queue, POST /prompt, GET /system_stats, as ComfyUI answers.

Run as a script (a tenant's `command`): `python comfyui.py --port 8188`. A queued prompt
"runs" for `--prompt-seconds` (or the prompt's `extra_data.seconds`); /queue lists it under
`queue_running` while it runs and under `queue_pending` while it waits, in ComfyUI's
[number, prompt_id, prompt, extra_data, outputs_to_execute] shape.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import uuid

from aiohttp import web

QUEUE = web.AppKey("queue", dict)


async def _worker(app: web.Application) -> None:
    queue = app[QUEUE]
    while True:
        item = await queue["incoming"].get()
        queue["pending"].remove(item)
        queue["running"].append(item)
        await asyncio.sleep(float(item[3].get("seconds", queue["seconds"])))
        queue["running"].remove(item)
        queue["done"] += 1


async def queue_view(request: web.Request) -> web.Response:
    queue = request.app[QUEUE]
    return web.json_response({"queue_running": queue["running"],
                              "queue_pending": queue["pending"]})


async def prompt(request: web.Request) -> web.Response:
    queue = request.app[QUEUE]
    payload = await request.json()
    queue["number"] += 1
    prompt_id = str(uuid.uuid4())
    item = [queue["number"], prompt_id, payload.get("prompt", {}),
            payload.get("extra_data", {}), []]
    queue["pending"].append(item)
    queue["incoming"].put_nowait(item)
    return web.json_response({"prompt_id": prompt_id, "number": queue["number"],
                              "node_errors": {}})


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
                  "done": 0, "seconds": seconds}

    async def worker_ctx(app: web.Application):
        task = asyncio.create_task(_worker(app))
        yield
        task.cancel()

    app.cleanup_ctx.append(worker_ctx)
    app.router.add_get("/queue", queue_view)
    app.router.add_post("/prompt", prompt)
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
