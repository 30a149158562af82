"""What the soak runs in its own process, inside the sandbox's network namespace: a stand-in
cloud provider that counts what it answered (the budget check's reference and the cloud
canary) and a relay in front of llama-server that drops connections on demand."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from typing import Any

from aiohttp import web

from tests.standins.cloud import CloudStandin, Fault

__all__ = ["T1_MARKER", "CountingCloud", "DropProxy", "Fault"]

# Every T1 request's content carries this; the cloud provider must never see it.
T1_MARKER = "soak-T1-"


class CountingCloud(CloudStandin):
    """A stand-in cloud provider (tests/standins/cloud.py, the OpenAI wire format) that counts
    every request it began to answer with 200, with the usage it reports for it, and keeps
    the soak markers of every request it received (a T1 marker here is a sovereignty leak)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.answered = 0
        self.answered_tokens = 0
        self.refused = 0
        self.sovereign: list[str] = []  # markers of T1 requests that reached this provider

    async def _pre(self, request: web.Request) -> tuple[Any, Fault | None, web.Response | None]:
        body, fault, early = await super()._pre(request)
        text = json.dumps(body)
        if T1_MARKER in text:
            self.sovereign.append(text[:400])
        if early is not None or (fault is not None and fault.kind in ("hang", "close")):
            self.refused += 1
        elif isinstance(body, dict):
            self.answered += 1
            self.answered_tokens += self._prompt_tokens(body) + self.tokens_per_answer
        self.requests.clear()  # the counters above are all the soak needs: memory stays flat
        return body, fault, early

    @property
    def tokens_per_answer(self) -> int:
        """Completion tokens of every answer (the stand-in's `tokens` words)."""
        return len(self._words())


class DropProxy:
    """A TCP relay 127.0.0.1:`port` -> 127.0.0.1:`target` (the router's way to the CPU floor).
    `drop_next(n)`: the next n requests (a chunk starting with `POST `) have their connection
    reset before any byte of an answer, as llama-server does when it is overloaded."""

    def __init__(self, port: int, target: int) -> None:
        self.port = port
        self.target = target
        self.pending = 0
        self.dropped = 0
        self.refused: Counter[str] = Counter()  # why llama-server could not be reached
        self._server: asyncio.Server | None = None
        self._waiting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def drop_next(self, count: int) -> None:
        """Reset the connections of the next `count` requests."""
        self.pending += count

    async def start(self) -> DropProxy:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", self.port,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]  # port 0: kept from now on
        return self

    def _follow_the_floor(self) -> None:
        """Stop listening while llama-server does not (the router then sees connections
        refused, not reset, as it would without the relay); listen again once it does."""
        if self._server is None or self._waiting is not None:
            return
        self._server.close()
        self._server = None
        self._waiting = asyncio.create_task(self._relisten())

    async def _relisten(self) -> None:
        try:
            while True:
                await asyncio.sleep(0.1)
                try:
                    _, probe = await asyncio.open_connection("127.0.0.1", self.target)
                except OSError:
                    continue
                probe.close()
                await self.start()
                return
        finally:
            self._waiting = None

    async def stop(self) -> None:
        if self._waiting is not None:
            self._waiting.cancel()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
            except OSError as error:
                self.refused[type(error).__name__] += 1
                writer.transport.abort()  # the floor is down: this connection is reset,
                self._follow_the_floor()  # and the next ones are refused, as the floor's
                return
            await asyncio.gather(self._pump(reader, up_writer, writer, inbound=True),
                                 self._pump(up_reader, writer, up_writer, inbound=False))
        finally:
            self._tasks.discard(task)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                    other: asyncio.StreamWriter, *, inbound: bool) -> None:
        try:
            while data := await source.read(65536):
                if inbound and self.pending > 0 and data.startswith(b"POST "):
                    self.pending -= 1
                    self.dropped += 1
                    other.transport.abort()  # the client's side (the router)
                    sink.transport.abort()
                    return
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                sink.close()
            with contextlib.suppress(Exception):
                other.close()
