"""Loading feedback for streamed requests that wait (for a GPU mode switch, a queue, a slot).

While a streamed request waits, every `router.wait_feedback_s` the caller gets an SSE comment
line, `: waiting for mode creative, 14 s`, which SSE clients (the OpenAI and Anthropic SDKs
among them) ignore and proxies pass on, so that neither the person nor an idle timeout
gives up on a request that is only waiting. The first comment commits the answer: status
200, `text/event-stream`, `X-Mushishi-Backend: pending` (the backend that answers is named
by a `: backend NAME` comment before its first event), and an error found afterwards ends
the stream with an error event instead of an HTTP status. A wait shorter than the interval
sends nothing, and non-streamed requests never get anything extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from mushishi.shared.tasks import cancel_and_wait

log = logging.getLogger("mushishi.router.request")

SSE_CONTENT_TYPE = "text/event-stream"
PENDING_BACKEND = "pending"


class WaitFeedback:
    """The comment lines of one streamed request, and the answer they committed (if any)."""

    __slots__ = ("_headers", "_request", "_started", "interval_s", "response")

    def __init__(self, request: web.Request, headers: dict[str, str], interval_s: float,
                 started: float) -> None:
        self._request = request
        self._headers = {**headers, "Content-Type": SSE_CONTENT_TYPE,
                         "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                         "X-Mushishi-Backend": PENDING_BACKEND}
        self.interval_s = interval_s
        self._started = started  # perf_counter at the request's arrival
        # The answer once the first comment went out (its headers may be half sent when a
        # comment was cancelled mid-way: whoever answers next reuses it, never a second one).
        self.response: web.StreamResponse | None = None

    @property
    def committed(self) -> bool:
        """True once the caller has the answer's headers (status 200, an event stream)."""
        return self.response is not None

    @contextlib.asynccontextmanager
    async def waiting(self, what: str) -> AsyncIterator[None]:
        """Send `: waiting for WHAT, N s` every interval while the block runs."""
        ticker = asyncio.create_task(self._comments(what))
        try:
            yield
        finally:
            await cancel_and_wait(ticker)

    async def _comments(self, what: str) -> None:
        try:
            while True:
                await asyncio.sleep(self.interval_s)
                response = await self.prepared()
                waited = time.perf_counter() - self._started
                await response.write(f": waiting for {what}, {waited:.0f} s\n\n".encode())
        except (ConnectionError, RuntimeError):
            pass  # the caller went away: the request notices by itself

    async def prepared(self) -> web.StreamResponse:
        """The committed answer, its headers sent."""
        if self.response is None:
            self.response = web.StreamResponse(status=200, headers=self._headers)
        if not self.response.prepared:
            await self.response.prepare(self._request)
        return self.response

    async def end_with(self, event: bytes) -> web.StreamResponse:
        """End the committed answer with `event` (an SSE error event)."""
        response = await self.prepared()
        with contextlib.suppress(ConnectionError, RuntimeError):
            await response.write(event)
            await response.write_eof()
        return response
