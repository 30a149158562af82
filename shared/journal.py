"""Logging to the systemd journal with structured fields, or to stderr without one.

Fields come from two places: `extra={"MUSHISHI_PROFILE": "private"}` on a single call, and
`bind_fields(...)` for everything logged in the current task (a request, a mode switch).
Only upper-case names are sent as journal fields, so `journalctl MUSHISHI_PROFILE=private`
works; the standard ones (MESSAGE, PRIORITY, CODE_*, SYSLOG_IDENTIFIER, LOGGER) are always
set, and MUSHISHI_REDACTED: the message with every argument withheld that could carry text
(`redacted_message`), the only form of a record that a failure alert sends off the box.
"""

from __future__ import annotations

import array
import enum
import logging
import os
import re
import socket
import sys
import traceback
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from types import MappingProxyType
from typing import Any

JOURNAL_SOCKET = "/run/systemd/journal/socket"

STRUCTURED_FIELDS = ("MUSHISHI_PROFILE", "MUSHISHI_BACKEND", "MUSHISHI_TIER", "MUSHISHI_MODE")
_STANDARD_FIELDS = frozenset({"MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "LOGGER", "CODE_FILE",
                              "CODE_LINE", "CODE_FUNC"})

_bound: ContextVar[Mapping[str, str]] = ContextVar(
    "mushishi_log_fields", default=MappingProxyType({})
)

# Python level -> syslog priority.
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def _priority(levelno: int) -> int:
    for level, priority in sorted(_PRIORITY.items(), reverse=True):
        if levelno >= level:
            return priority
    return 7


class bind_fields:
    """Attach journal fields (upper-case names) to every record logged inside the block."""

    __slots__ = ("_fields", "_token")

    def __init__(self, **fields: str | None) -> None:
        self._fields = {k.upper(): str(v) for k, v in fields.items() if v is not None}

    def __enter__(self) -> None:
        self._token = _bound.set({**_bound.get(), **self._fields})

    def __exit__(self, *exc_info: object) -> None:
        _bound.reset(self._token)


# The attributes every LogRecord has: what is left of a record's are `extra` ones.
_RECORD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def record_fields(record: logging.LogRecord) -> dict[str, str]:
    """The structured fields of a record: bound ones, then per-call `extra` ones."""
    fields = dict(_bound.get())
    attributes = record.__dict__
    for key in attributes.keys() - _RECORD_ATTRIBUTES:
        value = attributes[key]
        if key.isupper() and value is not None:
            fields[key] = str(value)
    return fields


# One %-conversion of a logging format string (printf-style, as `logging` applies it).
_CONVERSION = re.compile(
    r"%(?:\([^)]*\))?[#0 +\-]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[hlL]?[diouxXeEfFgGcrsa%]")
WITHHELD = "…"
REDACTED_FIELD = "MUSHISHI_REDACTED"


def _shown(value: object) -> bool:
    """Arguments that cannot carry text: numbers and members of enumerations (whose values
    are written in the code)."""
    return isinstance(value, (int, float, enum.Enum))


def redacted_message(record: logging.LogRecord) -> str:
    """The record's message with every argument withheld (`…`) but numbers and enumeration
    members: the format string is text from mushishi's source (tests/unit/test_log_templates.py
    holds every logging call to a literal), an argument may quote a backend or a prompt."""
    template = record.msg if isinstance(record.msg, str) else WITHHELD
    args = record.args
    if not args:
        return template
    if not isinstance(args, tuple):  # `%(name)s` with a mapping: show no value
        return _CONVERSION.sub(lambda m: "%" if m.group() == "%%" else WITHHELD, template)
    remaining = list(args)

    def fill(match: re.Match[str]) -> str:
        spec = match.group()
        if spec == "%%":
            return "%"
        if "*" in spec or not remaining:
            return WITHHELD
        value = remaining.pop(0)
        if not _shown(value):
            return WITHHELD
        try:
            return spec % (value,)
        except (TypeError, ValueError):
            return WITHHELD

    return _CONVERSION.sub(fill, template)


def encode_field(name: str, value: str) -> bytes:
    """One field in the journal's native format (binary-safe form for multi-line values)."""
    data = value.encode("utf-8", "replace")
    key = name.encode("ascii")
    if b"\n" not in data:
        return key + b"=" + data + b"\n"
    return key + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"


def encode_fields(fields: Mapping[str, str]) -> bytes:
    """Fields in the journal's native format, encoded at once when no value spans lines (a
    record's usual case: one join and one encode instead of two per field)."""
    if any("\n" in value for value in fields.values()) or not all(
            name.isascii() for name in fields):
        return b"".join([encode_field(name, value) for name, value in fields.items()])
    return "".join([f"{name}={value}\n" for name, value in fields.items()]).encode(
        "utf-8", "replace")


class JournalHandler(logging.Handler):
    """Sends records to journald over its native datagram protocol."""

    def __init__(self, identifier: str, socket_path: str = JOURNAL_SOCKET) -> None:
        super().__init__()
        self.identifier = identifier
        self.socket_path = socket_path
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        # The fields every record of one call site shares, encoded once (a daemon has a few
        # hundred call sites; the bound keeps a misbehaving caller from growing it forever).
        self._site_fields: dict[tuple[int, str, str, int, str], bytes] = {}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + "".join(traceback.format_exception(*record.exc_info))
            fields = record_fields(record)
            # The redacted form is always the handler's own (what an alert may send off the box).
            redacted = {REDACTED_FIELD: redacted_message(record)}
            if _STANDARD_FIELDS.isdisjoint(fields):
                payload = self._site(record) + encode_fields(
                    {"MESSAGE": message, **fields, **redacted})
            else:  # a caller set a standard field itself: it replaces ours
                payload = encode_fields(
                    {**self._standard(record, message), **fields, **redacted})
            self._send(payload)
        except Exception:  # a log line must never take the daemon down
            self.handleError(record)

    def _standard(self, record: logging.LogRecord, message: str) -> dict[str, str]:
        return {
            "MESSAGE": message,
            "PRIORITY": str(_priority(record.levelno)),
            "SYSLOG_IDENTIFIER": self.identifier,
            "LOGGER": record.name,
            "CODE_FILE": record.pathname,
            "CODE_LINE": str(record.lineno),
            "CODE_FUNC": record.funcName,
        }

    def _site(self, record: logging.LogRecord) -> bytes:
        """The encoded standard fields but MESSAGE, the same for every record of a call site."""
        key = (record.levelno, record.name, record.pathname, record.lineno, record.funcName)
        found = self._site_fields.get(key)
        if found is None:
            standard = self._standard(record, "")
            del standard["MESSAGE"]
            found = encode_fields(standard)
            if len(self._site_fields) < 4096:
                self._site_fields[key] = found
        return found

    def _send(self, payload: bytes) -> None:
        try:
            self._socket.sendto(payload, self.socket_path)
        except OSError as error:
            if error.errno not in (90, 105):  # EMSGSIZE, ENOBUFS: too big for a datagram
                raise
            # journald accepts large entries as a sealed memfd passed with SCM_RIGHTS.
            fd = os.memfd_create("journal", os.MFD_ALLOW_SEALING)
            try:
                os.write(fd, payload)
                self._socket.sendmsg(
                    [], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))],
                    0, self.socket_path,
                )
            finally:
                os.close(fd)

    def close(self) -> None:
        self._socket.close()
        super().close()


class StderrFormatter(logging.Formatter):
    """`LEVEL logger: message KEY=value …` for terminals and containers."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.levelname} {record.name}: {record.getMessage()}"
        fields = record_fields(record)
        if fields:
            text += " " + " ".join([f"{k}={v}" for k, v in sorted(fields.items())])
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_logging(identifier: str, *, level: int | str = logging.INFO,
                  socket_path: str = JOURNAL_SOCKET) -> logging.Handler:
    """Route the root logger to the journal when its socket exists, else to stderr."""
    handler: logging.Handler
    if Path(socket_path).exists():
        handler = JournalHandler(identifier, socket_path)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(StderrFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def log_extra(**fields: Any) -> dict[str, str]:
    """`extra=` for one call: log_extra(profile="private") -> {"MUSHISHI_PROFILE": "private"}."""
    return {f"MUSHISHI_{k.upper()}": str(v) for k, v in fields.items() if v is not None}


JOURNAL_STDOUT_SOCKET = "/run/systemd/journal/stdout"


def open_stream(identifier: str, *, priority: int = 6,
                socket_path: str = JOURNAL_STDOUT_SOCKET) -> int | None:
    """A file descriptor whose lines journald records under `identifier` (what
    sd_journal_stream_fd(3) does), for a child's stdout/stderr; None without a journal."""
    if not Path(socket_path).exists():
        return None
    stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        stream.connect(socket_path)
        stream.shutdown(socket.SHUT_RD)
        # identifier, unit id (set only by PID 1), priority, level prefix, and forwarding
        # to syslog, kmsg and console: all off.
        stream.sendall(f"{identifier}\n\n{priority}\n0\n0\n0\n0\n".encode())
    except OSError:
        stream.close()
        return None
    return stream.detach()
