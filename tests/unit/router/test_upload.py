"""The multipart form scanner: fields and the model's place, however the body is cut."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mushishi.services.router.upload import (
    FormError,
    FormScanner,
    form_boundary,
    keep_chunks_on_the_heap,
)

BOUNDARY = b"----formdata-mushishi-0123"


def form(*parts: tuple[str, str | None, bytes]) -> bytes:
    out = b""
    for name, filename, value in parts:
        disposition = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename else "")
        out += b"--" + BOUNDARY + b"\r\nContent-Disposition: " + disposition.encode()
        if filename:
            out += b"\r\nContent-Type: audio/wav"
        out += b"\r\n\r\n" + value + b"\r\n"
    return out + b"--" + BOUNDARY + b"--\r\n"


# A file whose bytes look like the boundary's start, CRLFs and dashes included.
TRICKY = b"RIFF\r\n--" + BOUNDARY[:-1] + b"\r\n\r\n--\r\n" + bytes(range(256)) * 3
BODY = form(("model", None, b"voice"), ("response_format", None, b"verbose_json"),
            ("file", "a.wav", TRICKY), ("language", None, "français".encode()))


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 16, 41, 64, 1000, len(BODY)])
def test_fields_and_the_model_span_whatever_the_pieces(piece: int) -> None:
    scanner = FormScanner(BOUNDARY)
    for start in range(0, len(BODY), piece):
        scanner.feed(BODY[start:start + piece])
    assert scanner.complete
    assert scanner.fields == {"model": "voice", "response_format": "verbose_json",
                              "language": "français"}
    assert scanner.file_parts == 1
    assert scanner.model_span is not None
    start, end = scanner.model_span
    assert BODY[start:end] == b"voice"


def test_a_field_after_the_file_is_found_too() -> None:
    body = form(("file", "a.wav", TRICKY), ("model", None, b"late"))
    scanner = FormScanner(BOUNDARY)
    scanner.feed(body)
    assert scanner.fields == {"model": "late"}
    start, end = scanner.model_span or (0, 0)
    assert body[start:end] == b"late"


@pytest.mark.parametrize(("body", "message"), [
    (b"--" + BOUNDARY + b"\r\nContent-Type: text/plain\r\n\r\nx\r\n--" + BOUNDARY + b"--",
     "no Content-Disposition"),
    (b"--" + BOUNDARY + b"\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n"
     + b"x" * 70000, "exceeds 64 KiB"),
    (b"--" + BOUNDARY + b"XX", "not followed by CRLF"),
])
def test_malformed_forms_are_named(body: bytes, message: str) -> None:
    scanner = FormScanner(BOUNDARY)
    with pytest.raises(FormError, match=message):
        scanner.feed(body)


def test_an_unfinished_form_is_not_complete() -> None:
    scanner = FormScanner(BOUNDARY)
    scanner.feed(BODY[:-10])
    assert not scanner.complete


@pytest.mark.parametrize(("header", "ok"), [
    ("multipart/form-data; boundary=abc", True),
    ('multipart/form-data; boundary="a b:c"', True),
    ("multipart/form-data", False),
    ("application/json", False),
    ("", False),
    ("multipart/form-data; boundary=" + "x" * 71, False),
])
def test_form_boundary(header: str, ok: bool) -> None:
    if ok:
        assert form_boundary(header)
    else:
        with pytest.raises(FormError):
            form_boundary(header)


def test_an_error_shows_a_plain_field_name_but_never_free_text() -> None:
    long_value = b"x" * 70000
    for name, shown in (("prompt", "'prompt'"),
                        ("the secret plan of the client", "(a field not in OpenAI's forms)"),
                        ("secret-plan", "(a field not in OpenAI's forms)")):
        scanner = FormScanner(BOUNDARY)
        with pytest.raises(FormError) as caught:
            scanner.feed(b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="'
                         + name.encode() + b'"\r\n\r\n' + long_value)
        assert str(caught.value).startswith(f"form field {shown} exceeds 64 KiB")
        assert "secret" not in str(caught.value)


# An upload's life on the heap: pieces of 256,000 bytes read one after another with a few
# alive at once, then all dropped; page faults counted over the second set of uploads.
_PIECES = """
import resource, sys
from collections import deque
from mushishi.services.router.upload import keep_chunks_on_the_heap
if sys.argv[1] == "tuned":
    assert keep_chunks_on_the_heap({})
def uploads():
    for _ in range(20):
        window = deque()
        for _ in range(80):
            window.append(b"x" * 256000)
            if len(window) > 3:
                window.popleft()
        window.clear()
uploads()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
uploads()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> int:
    environ = {k: v for k, v in os.environ.items()
               if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")}
    done = subprocess.run([sys.executable, "-c", _PIECES, mode], env=environ, check=True,
                          capture_output=True, text=True, timeout=60)
    return int(done.stdout.strip())


def test_upload_pieces_stay_on_the_heap_instead_of_faulting_in_again() -> None:
    # glibc's defaults hand freed pieces back to the kernel and fault them in again: about
    # 4,000 faults for these 1,600 pieces on this machine; kept on the heap, none.
    assert _page_faults("default") > 1000
    assert _page_faults("tuned") < 50


def test_an_operators_malloc_settings_are_left_alone() -> None:
    assert not keep_chunks_on_the_heap({"MALLOC_TRIM_THRESHOLD_": "0"})
    assert not keep_chunks_on_the_heap({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"})
