"""A minimal HTTP/1.1 GET on asyncio streams, for reading local daemons from `mushishi
status`, `mushishi route` and the watchdog: the router's /status (router_status.py) and
llama-server's /v1/models (here).

Why not aiohttp: importing it costs more than `mushishi status` spends on everything else
(about 0.2 s here), and these answers are small JSON documents from the machine itself.
Callers bound the whole exchange with `asyncio.timeout` (see readings.within): cancelling
it closes the socket, and no thread is left behind.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from mushishi.shared.config.router import connect_url
from mushishi.shared.readings import Reading, down, error, ok

HTTP_LIMIT = 8 * 1024 * 1024


class HttpError(Exception):
    """A malformed or oversized HTTP answer."""


async def http_get(path: str, *, unix_socket: str | None = None, host: str | None = None,
                   port: int | None = None) -> tuple[int, bytes]:
    """GET `path` over a unix socket or TCP (`Connection: close`); (status, body)."""
    if unix_socket is not None:
        reader, writer = await asyncio.open_unix_connection(unix_socket)
        host_header = "localhost"
    else:
        assert host is not None and port is not None
        reader, writer = await asyncio.open_connection(host, port)
        host_header = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nAccept: application/json"
                     "\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise HttpError("response headers too large") from None
        except asyncio.IncompleteReadError:
            raise HttpError("the connection closed before a response") from None
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise HttpError(f"not an HTTP response: {status_line[:80]!r}")
        headers = {}
        for line in header_lines:
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await _read_chunked(reader)
        elif "content-length" in headers:
            length = int(headers["content-length"])
            if length > HTTP_LIMIT:
                raise HttpError(f"response of {length} bytes is too large")
            body = await reader.readexactly(length)
        else:
            body = await reader.read(HTTP_LIMIT)
        return int(parts[1]), body
    finally:
        writer.close()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)
        if len(body) > HTTP_LIMIT:
            raise HttpError("response too large")


def json_object(body: bytes, what: str) -> dict[str, Any]:
    """The body as a JSON object; HttpError naming `what` otherwise."""
    try:
        data = json.loads(body)
    except ValueError:
        raise HttpError(f"{what} is not JSON") from None
    if not isinstance(data, dict):
        raise HttpError(f"{what} is not a JSON object")
    return data


# Errors a read from a local daemon can end with, besides the HTTP answer itself.
READ_ERRORS = (OSError, HttpError, asyncio.IncompleteReadError, ValueError)


async def served_models(host: str, port: int) -> Reading[list[str]]:
    """The model names an OpenAI-compatible server (llama-server) lists on GET /v1/models,
    sorted; `down` when it does not answer, `error` when its answer is not a model list.
    `host` is where to connect (config.router.connect_host of a listen host)."""
    where = f"{connect_url(host, port)}/v1/models"
    try:
        status, body = await http_get("/v1/models", host=host, port=port)
    except ConnectionRefusedError:
        return down(f"llama-server does not answer on {where} (connection refused; "
                    "`systemctl status mushishi-cpu-floor`)")
    except READ_ERRORS as caught:
        return down(f"GET {where} failed: {caught}")
    if status != 200:
        return down(f"GET {where} answered {status} (loading?)")
    try:
        data = json_object(body, where)
    except HttpError as caught:
        return error(str(caught))
    names: set[str] = set()
    for entry in data.get("data") or []:
        if isinstance(entry, dict) and entry.get("id"):
            names.add(str(entry["id"]))
    for entry in data.get("models") or []:
        if isinstance(entry, dict):
            names.update(str(entry[k]) for k in ("name", "model") if entry.get(k))
    return ok(sorted(names))
