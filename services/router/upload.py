"""Multipart uploads (audio transcriptions and translations, image edits) on their way to a hop.

The caller's `multipart/form-data` body is read once, a piece at a time, into a spool file
that is unlinked from the start (`tempfile.TemporaryFile`, in the unit's private /tmp), and
every hop's request is sent from that spool. The first hop's request starts as soon as the
form's `model` field is known (the OpenAI SDKs send their fields before the file) and
follows the upload as it arrives; a hop tried after a failure replays the spool. So the
router holds a bounded buffer of an upload in memory (UPLOAD_BUFFER_BYTES), whatever its
size, and fallback works as for JSON bodies. The form itself is passed through byte for
byte except the `model` field's value, which becomes each hop's served model.

`FormScanner` finds the form's parts as the bytes pass: the values of its small text fields
(`model`, `stream`, `response_format` …) and where `model`'s value lies; file contents are
never kept, parsed or logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Mapping
from email.parser import HeaderParser
from typing import Any

from mushishi.services.router.call import Streamed
from mushishi.services.router.core import Hop

# The most of an upload read from the caller, or from the spool for a hop, at once.
UPLOAD_CHUNK_BYTES = 64 * 1024
# What the router holds of one upload in memory at most: the latest pieces read from the
# caller (≤ 256 KiB, sent from memory to a hop that keeps up), aiohttp's read buffer behind
# them (≤ 128 KiB), a piece read back from the spool for a hop that lags or replays
# (≤ 256 KiB) and the socket's write buffer to the hop (≤ 64 KiB) ahead of it.
# benchmarks/router/upload.py measures it.
UPLOAD_BUFFER_BYTES = 1024 * 1024
# The latest pieces of an upload kept in memory for a hop that keeps up (the rest is read
# back from the spool).
_RECENT_BYTES = 128 * 1024
# A text field's value (model, prompt, language …) and a part's headers are kept, within
# these; a larger one is an error (a file must carry a filename).
FIELD_LIMIT_BYTES = 64 * 1024
_HEADERS_LIMIT_BYTES = 16 * 1024
# glibc's mallopt parameters (malloc.h), and the values the router sets: see
# keep_chunks_on_the_heap.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 1024 * 1024
_TRIM_THRESHOLD_BYTES = 4 * 1024 * 1024
_BOUNDARY = re.compile(r"^[0-9A-Za-z'()+_,./:=? -]{1,70}$")


# The fields of OpenAI's upload forms (transcriptions, translations, image edits): the only
# names an error message, which is logged, shows; a caller may put any text in a name.
_KNOWN_FIELDS = frozenset({
    "file", "model", "prompt", "response_format", "temperature", "language", "stream",
    "timestamp_granularities[]", "include[]", "chunking_strategy", "known_speaker_names[]",
    "known_speaker_references[]", "image", "image[]", "mask", "n", "size", "quality",
    "background", "output_format", "output_compression", "input_fidelity", "partial_images",
    "moderation", "user"})


def _shown(name: str) -> str:
    """A form field's name as an error message may show it: one of OpenAI's, never free
    text a caller put there."""
    return repr(name) if name in _KNOWN_FIELDS else "(a field not in OpenAI's forms)"


def keep_chunks_on_the_heap(environ: Mapping[str, str] | None = None) -> bool:
    """Have glibc's malloc keep the relay's pieces (up to 256 KiB each, several alive at once:
    the event loop's read, aiohttp's copy of the body, the recent window) on its heap, and
    keep up to 4 MiB it freed there instead of handing it back to the kernel at once.

    With glibc's defaults a 20 MB upload made the heap shrink and grow again for most of its
    80 pieces: a page fault for every 4 KiB, 16-20% of the router's CPU time per upload
    (perf, and the upload benchmark with and without: benchmarks/router/README.md).
    False where it does not apply: not glibc, or the operator chose malloc's settings
    (MALLOC_*_ or GLIBC_TUNABLES in the environment). Setting them ends glibc's own moving
    threshold: a block over 1 MiB (a large JSON body) is mapped afresh each time, as it was
    before its first free with the defaults."""
    environ = os.environ if environ is None else environ
    if "GLIBC_TUNABLES" in environ or any(
            name.startswith("MALLOC_") and name.endswith("_") for name in environ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return (mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES) == 1
            and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES) == 1)


class FormError(ValueError):
    """The body is not the multipart/form-data its Content-Type announced."""


class UploadTooLarge(Exception):
    """The upload went past router.max_body_bytes while it was read."""


class UploadAborted(Exception):
    """The caller's upload broke off (it disconnected, or its form is malformed) while a hop
    was being sent it: the request ends, no other hop is tried."""


def form_boundary(header: str) -> bytes:
    """The boundary of a multipart/form-data Content-Type header, or FormError naming what is
    wrong."""
    parsed = HeaderParser().parsestr(f"Content-Type: {header}\n")
    if parsed.get_content_type() != "multipart/form-data" or not header:
        raise FormError(f"Content-Type must be multipart/form-data (got {header or 'none'})")
    boundary = parsed.get_param("boundary")
    if not isinstance(boundary, str) or not _BOUNDARY.match(boundary) \
            or boundary.endswith(" "):
        raise FormError("Content-Type multipart/form-data needs a valid boundary parameter")
    return boundary.encode("ascii")


class FormScanner:
    """Fed a multipart/form-data body piece by piece; keeps its text fields' values and where
    the `model` field's value lies (absolute offsets in the body)."""

    def __init__(self, boundary: bytes) -> None:
        self._delimiter = b"\r\n--" + boundary
        # The first delimiter has no CRLF before it: pretend it had one.
        self._pending = b"\r\n"
        self._base = -2  # body offset of self._pending[0]
        self._state = "preamble"  # preamble | headers | value | file | epilogue
        self._name = ""
        self._value = bytearray()
        self._value_start = 0
        self.fields: dict[str, str] = {}
        self.model_span: tuple[int, int] | None = None
        self.file_parts = 0

    @property
    def complete(self) -> bool:
        """The closing delimiter has been seen."""
        return self._state == "epilogue"

    def feed(self, data: bytes) -> None:
        """Scan the next piece of the body."""
        if self._state == "epilogue":
            return
        keep = len(self._delimiter) + 1
        if self._state == "file" and len(data) > 2 * keep and len(self._pending) <= keep \
                and (self._pending + data[:keep]).find(self._delimiter) < 0 \
                and data.find(self._delimiter) < 0:
            # The bulk of an upload: a file's bytes with no delimiter, passed without a copy.
            self._base += len(self._pending) + len(data) - keep
            self._pending = data[-keep:]
            return
        pending = self._pending + data if self._pending else data
        self._pending = b""
        position = 0
        while True:
            if self._state == "headers":
                end = pending.find(b"\r\n\r\n", position)
                if end < 0:
                    if len(pending) - position > _HEADERS_LIMIT_BYTES:
                        raise FormError("a form part's headers exceed 16 KiB")
                    break
                self._part_headers(pending[position:end].decode("utf-8", "replace"))
                position = end + 4
                self._value_start = self._base + position
                continue
            found = pending.find(self._delimiter, position)
            if found < 0:
                keep = max(position, len(pending) - len(self._delimiter) - 1)
                self._take_value(pending[position:keep])
                position = keep
                break
            after = found + len(self._delimiter)
            if len(pending) < after + 2:
                # The delimiter's tail (`--` or CRLF) has not arrived: wait for it.
                self._take_value(pending[position:found])
                position = found
                break
            self._take_value(pending[position:found])
            self._end_part(self._base + found)
            tail = pending[after:after + 2]
            if tail == b"--":
                self._state = "epilogue"
                return
            if tail != b"\r\n":
                raise FormError("a form boundary is not followed by CRLF or --")
            self._state = "headers"
            position = after + 2
        self._pending = pending[position:]
        self._base += position

    def _take_value(self, data: bytes) -> None:
        if self._state == "value" and data:
            self._value += data
            if len(self._value) > FIELD_LIMIT_BYTES:
                raise FormError(f"form field {_shown(self._name)} exceeds 64 KiB (send files "
                                "with a filename)")

    def _part_headers(self, text: str) -> None:
        headers = HeaderParser().parsestr(text)
        if headers.get_content_disposition() != "form-data":
            raise FormError("a form part has no Content-Disposition: form-data")
        name = headers.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            raise FormError("a form part has no name")
        self._name = name
        if headers.get_filename() is not None:
            self._state = "file"
            self.file_parts += 1
        else:
            self._state = "value"
            self._value = bytearray()

    def _end_part(self, end: int) -> None:
        if self._state == "value":
            try:
                self.fields[self._name] = self._value.decode("utf-8")
            except UnicodeDecodeError:
                raise FormError(f"form field {_shown(self._name)} is not UTF-8") from None
            if self._name == "model":
                self.model_span = (self._value_start, end)
        self._value = bytearray()


class Upload:
    """One caller's multipart upload: read into its spool by `run`, sent to hops by
    `for_hop`. `close` ends it (and frees the spool)."""

    def __init__(self, content: Any, content_type: str, boundary: bytes,
                 declared_length: int | None, limit: int) -> None:
        self.content_type = content_type  # the caller's, boundary included
        self._content = content  # aiohttp's StreamReader of the request body
        self._declared = declared_length
        self._limit = limit
        self.scanner = FormScanner(boundary)
        self._spool = tempfile.TemporaryFile(prefix="mushishi-upload-")  # noqa: SIM115
        self.size = 0  # bytes spooled so far
        # The latest pieces, as read (offset, bytes): a hop that keeps up with the upload is
        # sent them from memory, not from the spool. At most _RECENT_BYTES of them.
        self._recent: deque[tuple[int, bytes]] = deque()
        self._recent_bytes = 0
        self.done = False
        self.error: BaseException | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin reading the caller's body."""
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def close(self) -> None:
        """Stop reading (if still reading) and drop the spool."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._spool.close()

    async def fields(self) -> dict[str, str]:
        """The form's text fields, once `model` is known and a file has begun (or the whole
        body has arrived): FormError, UploadTooLarge or UploadAborted if it went wrong."""
        while True:
            if self.error is not None:
                raise self.error
            scanner = self.scanner
            if self.done or ("model" in scanner.fields and scanner.file_parts):
                return dict(scanner.fields)
            await self._wait()

    def for_hop(self, hop: Hop) -> Streamed:
        """The form for `hop`: the caller's bytes, with `model` set to the hop's model."""
        span = self.scanner.model_span
        assert span is not None, "fields() returned without a model"
        model = hop.model.encode()
        length = None
        total = self.size if self.done else self._declared
        if total is not None:
            length = total - (span[1] - span[0]) + len(model)
        return Streamed(self._replay(span, model), length)

    async def _replay(self, span: tuple[int, int], model: bytes
                      ) -> AsyncIterator[bytes | memoryview]:
        async for chunk in self._copy(0, span[0]):
            yield chunk
        yield model
        async for chunk in self._copy(span[1], None):
            yield chunk

    async def _copy(self, start: int, stop: int | None
                    ) -> AsyncIterator[bytes | memoryview]:
        """The spool's bytes from `start` to `stop` (None: to the end of the upload), waiting
        for those that have not arrived yet."""
        position = start
        fd = self._spool.fileno()
        while stop is None or position < stop:
            available = self.size if stop is None else min(self.size, stop)
            if position < available:
                chunk: bytes | memoryview | None = self._from_memory(position, available)
                if chunk is None:
                    chunk = os.pread(fd, min(UPLOAD_CHUNK_BYTES, available - position),
                                     position)
                position += len(chunk)
                yield chunk
                continue
            if self.error is not None:
                raise UploadAborted(str(self.error)) from self.error
            if self.done:
                if stop is not None and position < stop:
                    raise UploadAborted("the upload ended early")
                return
            await self._wait()

    def _from_memory(self, position: int, stop: int) -> bytes | memoryview | None:
        """The piece read from the caller that holds `position`, from there (to `stop` at
        most, a view: no copy), if it is still among the recent ones."""
        recent = self._recent
        if not recent or position < recent[0][0]:
            return None
        for offset, piece in recent:
            if offset <= position < offset + len(piece):
                start = position - offset
                end = min(len(piece), stop - offset)
                return piece if start == 0 and end == len(piece) \
                    else memoryview(piece)[start:end]
        return None

    async def _wait(self) -> None:
        self._changed.clear()
        await self._changed.wait()

    async def _read(self) -> None:
        fd = self._spool.fileno()
        try:
            while True:
                # One piece as it arrived: readany() would join every buffered piece.
                chunk, _ = await self._content.readchunk()
                if not chunk:
                    break
                if self.size + len(chunk) > self._limit:
                    raise UploadTooLarge(f"body exceeds router.max_body_bytes ({self._limit})")
                self.scanner.feed(chunk)
                written = 0
                while written < len(chunk):
                    written += os.pwrite(fd, chunk[written:] if written else chunk,
                                         self.size + written)
                self._recent.append((self.size, chunk))
                self._recent_bytes += len(chunk)
                while self._recent_bytes > _RECENT_BYTES and len(self._recent) > 1:
                    self._recent_bytes -= len(self._recent.popleft()[1])
                self.size += len(chunk)
                self._changed.set()
            if not self.scanner.complete:
                raise FormError("the form ends before its closing boundary")
            if self._declared is not None and self.size != self._declared:
                raise FormError(f"the body has {self.size} bytes, not its Content-Length "
                                f"({self._declared})")
        except (FormError, UploadTooLarge) as error:
            self.error = error
        except (ConnectionError, OSError, asyncio.IncompleteReadError) as error:
            self.error = UploadAborted(f"the caller's upload broke off ({type(error).__name__})")
        except Exception as error:  # aiohttp's payload errors
            self.error = UploadAborted(f"the caller's upload broke off ({type(error).__name__})")
        finally:
            self.done = True
            self._changed.set()
