"""open_stream speaks journald's stdout-stream protocol (what sd_journal_stream_fd does)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from mushishi.shared.journal import open_stream


def test_stream_sends_the_header_then_the_lines(tmp_path: Path) -> None:
    path = str(tmp_path / "stdout")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    fd = open_stream("llama-server", priority=5, socket_path=path)
    assert fd is not None
    connection, _ = server.accept()
    os.write(fd, b"model loaded\n")
    os.close(fd)
    received = b""
    while chunk := connection.recv(4096):
        received += chunk
    connection.close()
    server.close()
    # identifier, unit id, priority, level prefix, forward to syslog, kmsg, console
    assert received == b"llama-server\n\n5\n0\n0\n0\n0\nmodel loaded\n"


def test_without_a_journal_there_is_no_stream(tmp_path: Path) -> None:
    assert open_stream("x", socket_path=str(tmp_path / "absent")) is None
