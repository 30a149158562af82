"""The journal handler speaks journald's native protocol to a real datagram socket."""

from __future__ import annotations

import array
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from mushishi.shared.journal import (
    JournalHandler,
    StderrFormatter,
    bind_fields,
    encode_field,
    encode_fields,
    log_extra,
    redacted_message,
    setup_logging,
)


def parse_native(payload: bytes) -> dict[str, str]:
    """Decode journald's native format (the inverse of what journald itself parses)."""
    fields: dict[str, str] = {}
    rest = payload
    while rest:
        line, _, after = rest.partition(b"\n")
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value.decode()
            rest = after
        else:
            size = int.from_bytes(after[:8], "little")
            fields[line.decode()] = after[8:8 + size].decode()
            rest = after[8 + size + 1:]
    return fields


@pytest.fixture
def journal_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "journal.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(2)
    yield server, path
    server.close()


def receive(server: socket.socket) -> dict[str, str]:
    data, ancillary, _, _ = server.recvmsg(1 << 20, socket.CMSG_SPACE(4))
    if not data and ancillary:  # a large entry arrives as a memfd
        fds = array.array("i")
        fds.frombytes(ancillary[0][2][:4])
        with os.fdopen(fds[0], "rb") as handle:
            handle.seek(0)
            data = handle.read()
    return parse_native(data)


def make_logger(path: str) -> logging.Logger:
    logger = logging.getLogger(f"test-journal-{path}")
    logger.handlers = [JournalHandler("mushishi-test", path)]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger


def test_record_carries_standard_and_structured_fields(journal_socket) -> None:
    server, path = journal_socket
    logger = make_logger(path)
    with bind_fields(MUSHISHI_PROFILE="private", MUSHISHI_TIER="T1"):
        logger.warning("queue full for %s", "private", extra=log_extra(backend="gpu"))
    fields = receive(server)
    assert fields["MESSAGE"] == "queue full for private"
    assert fields["PRIORITY"] == "4"
    assert fields["SYSLOG_IDENTIFIER"] == "mushishi-test"
    assert fields["MUSHISHI_PROFILE"] == "private"
    assert fields["MUSHISHI_TIER"] == "T1"
    assert fields["MUSHISHI_BACKEND"] == "gpu"
    assert fields["CODE_FUNC"] == "test_record_carries_standard_and_structured_fields"


def test_bound_fields_end_with_their_block(journal_socket) -> None:
    server, path = journal_socket
    logger = make_logger(path)
    with bind_fields(MUSHISHI_MODE="forensic"):
        pass
    logger.info("after")
    assert "MUSHISHI_MODE" not in receive(server)


def test_multiline_message_and_traceback_survive(journal_socket) -> None:
    server, path = journal_socket
    logger = make_logger(path)
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("line one\nline two")
    message = receive(server)["MESSAGE"]
    assert message.startswith("line one\nline two\nTraceback")
    assert "ValueError: boom" in message


def test_oversized_entry_is_sent_as_memfd(journal_socket) -> None:
    server, path = journal_socket
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    logger = make_logger(path)
    big = "x" * (512 * 1024)
    logger.info(big)
    assert receive(server)["MESSAGE"] == big


def test_binary_safe_encoding_for_newlines() -> None:
    assert encode_field("A", "b") == b"A=b\n"
    assert encode_field("A", "b\nc") == b"A\n" + (3).to_bytes(8, "little") + b"b\nc\n"


def test_fields_encoded_at_once_match_field_by_field() -> None:
    """A record's fields are encoded in one go unless a value spans lines; the bytes are the
    same either way."""
    one_line = {"MESSAGE": "chat p -> b: 200 success", "MUSHISHI_PROFILE": "privé"}
    assert encode_fields(one_line) == b"".join(encode_field(k, v) for k, v in one_line.items())
    mixed = {**one_line, "MESSAGE": "line one\nline two"}
    assert encode_fields(mixed) == b"".join(encode_field(k, v) for k, v in mixed.items())
    assert parse_native(encode_fields(mixed)) == mixed
    with pytest.raises(UnicodeEncodeError):  # a field name journald would refuse
        encode_fields({"PROFILÉ": "x"})


def test_a_callers_field_cannot_replace_the_redacted_form(journal_socket) -> None:
    server, path = journal_socket
    logger = make_logger(path)
    logger.info("prompt was %s", "secret text", extra={"MUSHISHI_REDACTED": "secret text"})
    fields = receive(server)
    assert fields["MUSHISHI_REDACTED"] == "prompt was …"
    assert fields["MESSAGE"] == "prompt was secret text"


def test_without_journal_socket_logs_go_to_stderr(tmp_path: Path, capsys) -> None:
    handler = setup_logging("mushishi-test", socket_path=str(tmp_path / "absent"))
    try:
        assert isinstance(handler.formatter, StderrFormatter)
        with bind_fields(MUSHISHI_PROFILE="private"):
            logging.getLogger("x").info("hello")
        assert "INFO x: hello MUSHISHI_PROFILE=private" in capsys.readouterr().err
    finally:
        logging.getLogger().removeHandler(handler)


def test_record_carries_its_message_redacted(journal_socket) -> None:
    """MUSHISHI_REDACTED: the format string with numbers and enum members, never text."""
    server, path = journal_socket
    logger = make_logger(path)
    logger.error("backend %s answered %d after %.1f s (%s): %s", "gpu", 500, 1.25,
                 logging.WARNING, "a prompt quoted back")
    fields = receive(server)
    assert fields["MESSAGE"] == "backend gpu answered 500 after 1.2 s (30): a prompt quoted back"
    assert fields["MUSHISHI_REDACTED"] == "backend … answered 500 after 1.2 s (30): …"


@pytest.mark.parametrize(("msg", "args", "redacted"), [
    ("no arguments, 100%", (), "no arguments, 100%"),
    ("%d%% of %s", (42, "x"), "42% of …"),
    ("%5d|%-3s|", (7, "ab"), "    7|…|"),
    ("%(name)s and %(n)d", ({"name": "x", "n": 1},), "… and …"),
    ("%*d wide", (3, 5), "… wide"),
    ("%d as text", ("12",), "… as text"),
    ("%s member", (Path,), "… member"),
    ("too few %s %s", ("a",), "too few … …"),
])
def test_redacted_message_shows_only_numbers_and_enum_members(msg: str, args: tuple,
                                                              redacted: str) -> None:
    record = logging.LogRecord("mushishi.x", logging.ERROR, __file__, 1, msg, args, None)
    assert redacted_message(record) == redacted
