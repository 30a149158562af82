"""A stand-in for a GPU worker with a JSON status endpoint (an audio/TTS gateway).

Run as a script: `python json_queue.py --port 9000`. GET /health answers 200; GET /queue
answers `{"in_flight": N, "queues": {"tts": [...]}}`; POST /jobs?seconds=S adds one job that
runs for S seconds. The generic JSON busy probe reads `in_flight` (or `queues.tts`).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from aiohttp import web

JOBS = web.AppKey("jobs", list)
TASKS = web.AppKey("tasks", set)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def queue(request: web.Request) -> web.Response:
    jobs = request.app[JOBS]
    return web.json_response({"in_flight": len(jobs), "queues": {"tts": list(jobs)}})


async def add_job(request: web.Request) -> web.Response:
    jobs = request.app[JOBS]
    seconds = float(request.query.get("seconds", "1"))
    job = f"job-{len(jobs) + 1}"
    jobs.append(job)

    async def finish() -> None:
        await asyncio.sleep(seconds)
        jobs.remove(job)

    task = asyncio.create_task(finish())
    request.app[TASKS].add(task)
    task.add_done_callback(request.app[TASKS].discard)
    return web.json_response({"job": job})


def build_app() -> web.Application:
    """The stand-in's routes (importable for in-process tests on port 0)."""
    app = web.Application()
    app[JOBS] = []
    app[TASKS] = set()
    app.router.add_get("/health", health)
    app.router.add_get("/queue", queue)
    app.router.add_post("/jobs", add_job)
    return app


async def serve(args: argparse.Namespace) -> None:
    runner = web.AppRunner(build_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    print(f"json-queue stand-in on {args.host}:{args.port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    asyncio.run(serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
