"""Socket activation: sockets taken from LISTEN_FDS only for our PID, unix sockets bound here."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mushishi.shared.activation import bind_unix, systemd_sockets

_CHILD = """
import json, os, sys
from mushishi.shared.activation import systemd_sockets
os.dup2(int(sys.argv[1]), 3)
environ = {"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid()), "LISTEN_FDNAMES": "x.socket"}
sockets = systemd_sockets(environ)
print(json.dumps({"names": [s.getsockname() for s in sockets],
                  "blocking": [s.getblocking() for s in sockets], "environ": environ}))
"""


@pytest.mark.parametrize("environ", [{}, {"LISTEN_FDS": "1", "LISTEN_PID": "1"},
                                     {"LISTEN_PID": str(os.getpid())}])
def test_systemd_sockets_not_for_this_pid_is_none(environ: dict[str, str]) -> None:
    assert systemd_sockets(dict(environ)) is None


def test_systemd_sockets_passed_fd_is_taken_and_environment_cleared() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        child = subprocess.run([sys.executable, "-c", _CHILD, str(listener.fileno())],
                               pass_fds=[listener.fileno()], capture_output=True, text=True,
                               check=True, timeout=60)
    finally:
        port = listener.getsockname()[1]
        listener.close()
    answer = json.loads(child.stdout)
    assert answer["names"] == [["127.0.0.1", port]]
    assert answer["blocking"] == [False]
    assert answer["environ"] == {}


def test_bind_unix_stale_socket_is_replaced_with_mode_0660(tmp_path: Path) -> None:
    path = tmp_path / "daemon.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    sock = bind_unix(path)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(path))
        client.close()
    finally:
        sock.close()


def test_bind_unix_impossible_path_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(OSError, match=r"check router\.egress_socket"):
        bind_unix(tmp_path / "missing" / "x.sock", what="router.egress_socket")
