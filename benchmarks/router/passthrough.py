"""The reference peer: a bare aiohttp + uvloop pass-through (no auth, routing or metrics).

`python benchmarks/router/passthrough.py LISTEN_PORT UPSTREAM_URL` forwards every POST body
to UPSTREAM_URL with one shared ClientSession, and relays the answer.
"""

from __future__ import annotations

import sys

import aiohttp
import uvloop
from aiohttp import web


async def make_app(upstream: str) -> web.Application:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def forward(request: web.Request) -> web.StreamResponse:
        async with session.post(upstream, data=await request.read(),
                                headers={"Content-Type": "application/json"}) as response:
            return web.Response(body=await response.read(), status=response.status,
                                content_type=response.content_type)

    async def close(app: web.Application) -> None:
        await session.close()

    app = web.Application()
    app.router.add_post("/{tail:.*}", forward)
    app.on_cleanup.append(close)
    return app


if __name__ == "__main__":
    port, upstream = int(sys.argv[1]), sys.argv[2]
    uvloop.install()
    web.run_app(make_app(upstream), host="127.0.0.1", port=port, access_log=None,
                print=None)
