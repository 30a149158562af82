"""Images from ComfyUI: an OpenAI images/generations request run as a workflow.

A backend of `kind = "comfyui"` is not OpenAI-shaped. For each request the router fills a
copy of the backend's API-format workflow template (`workflow`) with the prompt, negative
prompt, seed, size (width, height) and count at the `workflow_inputs` paths
(`shared/comfyui_workflow.py`), then speaks ComfyUI's own API on the hop's pool: it opens
`/ws?clientId=…` first (so no message about its run is missed), `POST /prompt`, follows the
run's messages on the websocket (`status`, `execution_start`, `execution_cached`,
`executing`, `progress`, `executed`, and the end: `execution_success`, or `executing` with
`node: null`; `execution_error` and `execution_interrupted` fail it), reads
`/history/{prompt_id}` and fetches each output image with `/view`. The answer is OpenAI's
images shape: `b64_json`, or with `response_format = "url"` a URL the router serves itself
for an hour (`ImageStore`, in memory). Without an `n` path, n images are n runs with seeds
seed, seed+1, …

A run the router stops waiting for (the caller hung up, the backend's first_byte_timeout_s
passed, the websocket broke) is taken back from ComfyUI, so the GPU does not go on
rendering an image nobody will receive. The router names each run (`prompt_id`), so even
one whose /prompt answer never came is known. If `GET /queue` lists it waiting,
`POST /queue {"delete": [id]}` drops it; if running, `POST /interrupt {"prompt_id": id}`
stops it (ComfyUI before the targeted interrupt stops whatever runs, which /queue just
said is this run). That happens in the background, within ABANDON_TIMEOUT_S.

Nothing ComfyUI says is logged as is (its error messages may quote the prompt): a failed run
is described by node id, node type and exception type only.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from mushishi.services.router.core import Failure, Hop
from mushishi.services.router.errors import ErrorCode, Rejection
from mushishi.services.router.http1 import ConnectFailed, Pool, UpstreamError
from mushishi.shared.busy_probes import comfyui_queue
from mushishi.shared.comfyui_workflow import WorkflowError, fill, parse_workflow

log = logging.getLogger("mushishi.router.comfyui")

_JSON_HEADERS = b"Content-Type: application/json\r\nAccept-Encoding: identity\r\n"
_GET_HEADERS = b"Accept: */*\r\nAccept-Encoding: identity\r\n"
MAX_IMAGES = 10  # OpenAI's own limit on n
ABANDON_TIMEOUT_S = 10.0  # taking an abandoned run back from ComfyUI, at most
# Abandoned runs being taken back (a reference, so that no task is collected mid-way).
_abandoning: set[asyncio.Task[None]] = set()
SEED_LIMIT = 2**32


@dataclass(frozen=True, slots=True)
class ImageRequest:
    """What an images/generations request asks of a workflow."""

    prompt: str
    negative_prompt: str | None
    size: tuple[int, int] | None  # None: the template's own
    seed: int
    n: int
    response_format: str  # b64_json | url


def image_request(fields: Mapping[str, Any], seed: int | None = None) -> ImageRequest:
    """The request's values, or a Rejection (400) naming the field."""
    prompt = fields.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise Rejection(ErrorCode.INVALID_REQUEST, "`prompt` must be a non-empty string",
                        param="prompt")
    size_text = fields.get("size")
    size = None
    if size_text not in (None, "auto"):
        width, _, height = str(size_text).partition("x")
        if not (width.isdigit() and height.isdigit() and 0 < int(width) <= 16384
                and 0 < int(height) <= 16384):
            raise Rejection(ErrorCode.INVALID_REQUEST, "`size` must be WIDTHxHEIGHT (e.g. "
                            "1024x1024) or auto", param="size")
        size = (int(width), int(height))
    n = fields.get("n", 1)
    if n is None:
        n = 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_IMAGES:
        raise Rejection(ErrorCode.INVALID_REQUEST, f"`n` must be 1 to {MAX_IMAGES}",
                        param="n")
    given_seed = fields.get("seed")
    if given_seed is not None and (not isinstance(given_seed, int)
                                   or isinstance(given_seed, bool) or given_seed < 0):
        raise Rejection(ErrorCode.INVALID_REQUEST, "`seed` must be a non-negative integer",
                        param="seed")
    response_format = fields.get("response_format") or "b64_json"
    if response_format not in ("b64_json", "url"):
        raise Rejection(ErrorCode.INVALID_REQUEST, "`response_format` must be b64_json or "
                        "url", param="response_format")
    negative = fields.get("negative_prompt")
    return ImageRequest(
        prompt, negative if isinstance(negative, str) else None, size,
        given_seed if given_seed is not None else
        (seed if seed is not None else secrets.randbelow(SEED_LIMIT)), n, response_format)


def graphs(workflow: Mapping[str, Any], inputs: Mapping[str, str],
           request: ImageRequest) -> list[dict[str, Any]]:
    """The filled workflows to run: one with the batch size at the `n` path, else n runs
    with seeds seed, seed+1, …"""
    values: dict[str, Any] = {"prompt": request.prompt}
    if request.negative_prompt is not None:
        values["negative_prompt"] = request.negative_prompt
    if request.size is not None:
        values["width"], values["height"] = request.size
    if "n" in inputs:
        return [fill(workflow, inputs, {**values, "seed": request.seed, "n": request.n})]
    return [fill(workflow, inputs, {**values, "seed": request.seed + index})
            for index in range(request.n)]


def run_state(message: Mapping[str, Any], prompt_id: str) -> str | None:
    """What a websocket message says of run `prompt_id`: "done", a failure's description
    (facts only), or None (progress, another run's news, queue status)."""
    data = message.get("data")
    if not isinstance(data, dict) or data.get("prompt_id") != prompt_id:
        return None
    kind = message.get("type")
    if kind == "execution_success" or (kind == "executing" and data.get("node") is None):
        return "done"
    if kind == "execution_error":
        return (f"execution_error in node {_token(data.get('node_id'))} "
                f"({_token(data.get('node_type'))}: {_token(data.get('exception_type'))})")
    if kind == "execution_interrupted":
        return "execution_interrupted (someone pressed cancel in ComfyUI?)"
    return None


def _token(value: Any) -> str:
    """A short identifier from ComfyUI for a log line, or '?' (never free text)."""
    text = str(value) if value is not None else "?"
    return text if len(text) <= 80 and text.replace("_", "").replace(".", "").replace(
        "-", "").isalnum() else "?"


def output_images(history: Any, prompt_id: str) -> list[dict[str, str]]:
    """The run's images from /history/{prompt_id}: the `output` ones (SaveImage), else any
    (PreviewImage's `temp`)."""
    entry = history.get(prompt_id) if isinstance(history, dict) else None
    outputs = entry.get("outputs") if isinstance(entry, dict) else None
    if not isinstance(outputs, dict):
        return []
    found = [image for node in outputs.values() if isinstance(node, dict)
             for image in node.get("images") or []
             if isinstance(image, dict) and isinstance(image.get("filename"), str)]
    saved = [image for image in found if image.get("type") == "output"]
    return saved or found


class ImageStore:
    """Generated images served by the router at /v1/images/files/TOKEN for `ttl_s`, at most
    `max_bytes` in memory (the oldest go first); the token (128 random bits) is the key."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, ttl_s: float = 3600.0,
                 max_bytes: int = 256 * 1024 * 1024) -> None:
        self._clock = clock
        self._ttl_s = ttl_s
        self._max_bytes = max_bytes
        self._bytes = 0
        self._items: OrderedDict[str, tuple[float, str, bytes]] = OrderedDict()

    def put(self, data: bytes, content_type: str) -> str:
        """Keep `data`; its token."""
        self._expire()
        while self._items and self._bytes + len(data) > self._max_bytes:
            _, (_, _, old) = self._items.popitem(last=False)
            self._bytes -= len(old)
        token = secrets.token_urlsafe(16)
        self._items[token] = (self._clock() + self._ttl_s, content_type, data)
        self._bytes += len(data)
        return token

    def get(self, token: str) -> tuple[str, bytes] | None:
        """(content type, bytes) of a live token, else None."""
        self._expire()
        found = self._items.get(token)
        return (found[1], found[2]) if found is not None else None

    def _expire(self) -> None:
        now = self._clock()
        while self._items:
            token, (expires, _, data) = next(iter(self._items.items()))
            if expires > now:
                break
            del self._items[token]
            self._bytes -= len(data)


class RunFailed(Exception):
    """A ComfyUI run did not produce images: why (facts only), how it counts, and whether
    ComfyUI said the run ended (else it may still be queued or running)."""

    def __init__(self, kind: Failure, reason: str, status: int | None = None, *,
                 ended: bool = False) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.status = status
        self.ended = ended


@dataclass(frozen=True, slots=True)
class Image:
    """One image fetched from ComfyUI."""

    data: bytes
    content_type: str


async def read_template(hop: Hop) -> dict[str, Any]:
    """The hop's workflow template, read now (off the event loop)."""
    assert hop.workflow is not None
    path = hop.workflow
    try:
        raw = await asyncio.to_thread(_read_bytes, path)
    except OSError as error:
        raise RunFailed(Failure.STATUS, f"cannot read backends.{hop.name}.workflow "
                        f"{path}: {error.strerror or error}") from None
    try:
        return parse_workflow(raw, f"backends.{hop.name}.workflow {path}")
    except WorkflowError as error:
        raise RunFailed(Failure.STATUS, str(error)) from None


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


async def run_workflows(pool: Pool, websocket: tuple[str, str], runs: list[dict[str, Any]],
                        hop: Hop) -> list[Image]:
    """Run each filled workflow in turn on ComfyUI and fetch their images; RunFailed when
    one fails. `websocket`: the (URL, Host) of /ws with this run's client id."""
    url, host = websocket
    client_id = url.rsplit("clientId=", 1)[-1]
    images: list[Image] = []
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        try:
            socket = await session.ws_connect(url, headers={"Host": host}, heartbeat=None,
                                              max_msg_size=64 * 1024 * 1024)
        except (aiohttp.ClientError, OSError) as error:
            name = type(error).__name__
            raise RunFailed(Failure.CONNECT, f"websocket /ws did not open ({name})") from None
        async with socket:
            for graph in runs:
                # The id is the router's (ComfyUI takes a `prompt_id` in /prompt), so a run
                # can be taken back even when its /prompt answer never arrived.
                prompt_id = str(uuid.uuid4())
                try:
                    prompt_id = await _queue(pool, graph, client_id, prompt_id, hop)
                    await _follow(socket, prompt_id, hop)
                except BaseException as error:
                    if not (isinstance(error, ConnectFailed)  # nothing was sent
                            or (isinstance(error, RunFailed) and error.ended)):
                        abandon(pool, prompt_id, hop)
                    raise
                for reference in output_images(await _history(pool, prompt_id), prompt_id):
                    images.append(await _view(pool, reference))
    if not images:
        raise RunFailed(Failure.STATUS, "the workflow finished without an image (does it end "
                        "in a SaveImage or PreviewImage node?)")
    return images


async def _queue(pool: Pool, graph: dict[str, Any], client_id: str, prompt_id: str,
                 hop: Hop) -> str:
    """Queue one run: its prompt id (ComfyUI's answer; one without the targeted id keeps
    its own). A refused prompt is a RunFailed that ended (nothing was queued)."""
    body = json.dumps({"prompt": graph, "client_id": client_id,
                       "prompt_id": prompt_id}).encode()
    response = await pool.request("POST", "/prompt", _JSON_HEADERS, body)
    answer = await response.read()
    try:
        parsed = json.loads(answer)
    except ValueError:
        parsed = None
    if response.status == 200 and isinstance(parsed, dict) and \
            isinstance(parsed.get("prompt_id"), str):
        return str(parsed["prompt_id"])
    nodes = sorted(parsed.get("node_errors") or {}) if isinstance(parsed, dict) else []
    kind = _token(((parsed or {}).get("error") or {}).get("type")) \
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict) else "?"
    where = f" in nodes {', '.join(_token(node) for node in nodes)}" if nodes else ""
    raise RunFailed(Failure.STATUS, f"POST /prompt answered {response.status} ({kind}"
                    f"{where}); check backends.{hop.name}.workflow", response.status,
                    ended=response.status != 200)


async def _follow(socket: aiohttp.ClientWebSocketResponse, prompt_id: str, hop: Hop) -> None:
    """Read the websocket until run `prompt_id` ends; RunFailed when it fails."""
    async for message in socket:
        if message.type == aiohttp.WSMsgType.BINARY:
            continue  # previews of the image being made
        if message.type != aiohttp.WSMsgType.TEXT:
            break
        try:
            parsed = json.loads(message.data)
        except ValueError:
            continue
        if not isinstance(parsed, dict):
            continue
        state = run_state(parsed, prompt_id)
        if state == "done":
            return
        if state is not None:
            raise RunFailed(Failure.STATUS, f"ComfyUI run failed: {state}", ended=True)
        if parsed.get("type") == "progress":
            data = parsed.get("data") or {}
            log.debug("backend %s: step %s of %s", hop.name, _token(data.get("value")),
                      _token(data.get("max")), extra={"MUSHISHI_BACKEND": hop.name})
    raise RunFailed(Failure.BROKEN, "the websocket closed before the run ended")


def abandon(pool: Pool, prompt_id: str, hop: Hop) -> None:
    """Take run `prompt_id` back from ComfyUI in the background: nobody waits for it."""
    task = asyncio.get_running_loop().create_task(_take_back(pool, prompt_id, hop))
    _abandoning.add(task)
    task.add_done_callback(_abandoning.discard)


async def _take_back(pool: Pool, prompt_id: str, hop: Hop) -> None:
    extra = {"MUSHISHI_BACKEND": hop.name}
    try:
        async with asyncio.timeout(ABANDON_TIMEOUT_S):
            where = await _where(pool, prompt_id)
            if where == "pending":
                await _post_json(pool, "/queue", {"delete": [prompt_id]})
                where = await _where(pool, prompt_id)  # it may have started meanwhile
                if where is None:
                    log.info("backend %s: an abandoned run was taken off ComfyUI's queue "
                             "before it ran", hop.name, extra=extra)
                    return
            if where == "running":
                status = await _post_json(pool, "/interrupt", {"prompt_id": prompt_id})
                log.info("backend %s: an abandoned run was interrupted (POST /interrupt "
                         "answered %d)", hop.name, status, extra=extra)
            elif where == "pending":
                log.warning("backend %s: an abandoned run is still in ComfyUI's queue after "
                            "POST /queue deleted it; it will use the GPU for nobody",
                            hop.name, extra=extra)
            else:
                log.debug("backend %s: an abandoned run had already ended", hop.name,
                          extra=extra)
    except (TimeoutError, OSError, ValueError, UpstreamError) as error:
        log.warning("backend %s: an abandoned run could not be taken back from ComfyUI "
                    "(%s); it may go on using the GPU", hop.name, type(error).__name__,
                    extra=extra)


async def _where(pool: Pool, prompt_id: str) -> str | None:
    """Where ComfyUI's GET /queue lists `prompt_id`: "running", "pending", or None (not
    there); ValueError when /queue answers something else."""
    response = await pool.request("GET", "/queue", _GET_HEADERS)
    body = await response.read()
    if response.status != 200:
        raise ValueError(f"GET /queue answered {response.status}")
    running, pending = comfyui_queue(json.loads(body))
    for where, items in (("running", running), ("pending", pending)):
        if any(isinstance(item, list) and len(item) > 1 and item[1] == prompt_id
               for item in items):
            return where
    return None


async def _post_json(pool: Pool, path: str, payload: dict[str, Any]) -> int:
    response = await pool.request("POST", path, _JSON_HEADERS, json.dumps(payload).encode())
    await response.read()
    return response.status


async def _history(pool: Pool, prompt_id: str) -> Any:
    response = await pool.request("GET", f"/history/{quote(prompt_id, safe='')}",
                                  _GET_HEADERS)
    body = await response.read()
    if response.status != 200:
        raise RunFailed(Failure.STATUS, f"GET /history answered {response.status}",
                        response.status)
    try:
        return json.loads(body)
    except ValueError:
        raise RunFailed(Failure.STATUS, "GET /history answered something that is not "
                        "JSON") from None


async def _view(pool: Pool, reference: Mapping[str, str]) -> Image:
    query = urlencode({"filename": reference["filename"],
                       "subfolder": reference.get("subfolder") or "",
                       "type": reference.get("type") or "output"})
    response = await pool.request("GET", f"/view?{query}", _GET_HEADERS)
    data = await response.read()
    if response.status != 200:
        raise RunFailed(Failure.STATUS, f"GET /view answered {response.status}",
                        response.status)
    return Image(data, response.content_type if response.content_type.startswith("image/")
                 else "image/png")


def openai_images(images: list[Image], request: ImageRequest, store: ImageStore,
                  origin: str) -> dict[str, Any]:
    """The OpenAI images answer: b64_json, or URLs served by the router."""
    data: list[dict[str, Any]] = []
    for image in images:
        if request.response_format == "url":
            token = store.put(image.data, image.content_type)
            data.append({"url": f"{origin}/v1/images/files/{token}"})
        else:
            data.append({"b64_json": base64.b64encode(image.data).decode("ascii")})
    return {"created": int(time.time()), "data": data}


def new_client_id() -> str:
    """A websocket client id for one request."""
    return secrets.token_hex(16)
