"""A stand-in Docker Engine API on a unix socket, for the stop-list (no Docker runs here).

The official `docker` SDK talks to it unchanged (`DockerClient(base_url="unix://…")`):
GET /_ping, GET /version, GET /v1.x/containers/json, GET /v1.x/containers/{id}/json and
POST /v1.x/containers/{id}/stop, with the Engine API's field names. Containers come from
`--containers '[{"name": "ollama", "pid": 1234}]'`; stopping one marks it exited, sends
SIGTERM to its `pid` (the process that held GPU memory) and appends a JSON line to
`--log`, so a test can prove which containers were, and were not, stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path

from aiohttp import web

API_VERSION = "1.43"
CONTAINERS = web.AppKey("containers", dict)
LOG = web.AppKey("log", Path)


def _container_id(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _summary(container: dict) -> dict:
    return {"Id": container["Id"], "Names": [f"/{container['Name']}"],
            "Image": container.get("Image", "standin:latest"), "ImageID": "sha256:" + "0" * 64,
            "Command": "/bin/serve", "Created": container["Created"], "Ports": [],
            "Labels": {}, "State": container["State"],
            "Status": "Up 5 minutes" if container["State"] == "running" else "Exited (0)",
            "HostConfig": {"NetworkMode": "default"}, "NetworkSettings": {"Networks": {}},
            "Mounts": []}


def _find(request: web.Request) -> dict:
    key = request.match_info["id"]
    for container in request.app[CONTAINERS].values():
        if container["Id"].startswith(key) or container["Name"] == key.lstrip("/"):
            return container
    raise web.HTTPNotFound(text=json.dumps({"message": f"No such container: {key}"}),
                           content_type="application/json")


async def ping(request: web.Request) -> web.Response:
    return web.Response(text="OK", headers={"Api-Version": API_VERSION})


async def version(request: web.Request) -> web.Response:
    return web.json_response({"Version": "24.0.0-standin", "ApiVersion": API_VERSION,
                              "MinAPIVersion": "1.12", "Os": "linux", "Arch": "amd64",
                              "KernelVersion": os.uname().release})


async def list_containers(request: web.Request) -> web.Response:
    everything = request.query.get("all") in ("1", "true", "True")
    rows = [_summary(c) for c in request.app[CONTAINERS].values()
            if everything or c["State"] == "running"]
    return web.json_response(rows)


async def inspect(request: web.Request) -> web.Response:
    container = _find(request)
    running = container["State"] == "running"
    return web.json_response({
        "Id": container["Id"], "Name": f"/{container['Name']}", "Created": "2026-01-01T00:00:00Z",
        "State": {"Status": container["State"], "Running": running,
                  "Pid": container.get("pid", 0) if running else 0, "ExitCode": 0},
        "Config": {"Image": container.get("Image", "standin:latest"), "Labels": {}},
        "HostConfig": {"DeviceRequests": [{"Driver": "nvidia", "Count": -1,
                                           "Capabilities": [["gpu"]]}]},
        "Image": "sha256:" + "0" * 64})


async def stop(request: web.Request) -> web.Response:
    container = _find(request)
    if container["State"] != "running":
        return web.Response(status=304)
    container["State"] = "exited"
    pid = container.get("pid")
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGTERM)
    with request.app[LOG].open("a") as log:
        log.write(json.dumps({"stopped": container["Name"], "id": container["Id"],
                              "t": request.query.get("t"), "time": time.time()}) + "\n")
    return web.Response(status=204)


def build_app(containers: list[dict], log: Path) -> web.Application:
    """The Engine API routes over `containers` ([{name, pid?, image?}])."""
    app = web.Application()
    app[CONTAINERS] = {
        c["name"]: {"Id": _container_id(c["name"]), "Name": c["name"], "State": "running",
                    "Created": int(time.time()), "pid": c.get("pid"),
                    "Image": c.get("image", "standin:latest")}
        for c in containers}
    app[LOG] = log
    for prefix in ("", "/v{api}"):
        app.router.add_get(prefix + "/_ping", ping)
        app.router.add_get(prefix + "/version", version)
        app.router.add_get(prefix + "/containers/json", list_containers)
        app.router.add_get(prefix + "/containers/{id}/json", inspect)
        app.router.add_post(prefix + "/containers/{id}/stop", stop)
    return app


async def serve(args: argparse.Namespace) -> None:
    app = build_app(json.loads(args.containers), Path(args.log))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    Path(args.socket).unlink(missing_ok=True)
    await web.UnixSite(runner, args.socket).start()
    Path(args.socket).chmod(0o660)
    print(f"docker engine stand-in on unix:{args.socket}", flush=True)
    done = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, done.set)
    await done.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--containers", default="[]")
    parser.add_argument("--log", required=True)
    asyncio.run(serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
