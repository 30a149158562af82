"""sd_notify messages reach a real NOTIFY_SOCKET datagram socket."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from mushishi.shared.notify import Notifier


def test_ready_status_and_watchdog_reach_the_socket(tmp_path: Path, monkeypatch) -> None:
    path = str(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", path)  # sdnotify reads the process environment
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(2)
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000",
                         "WATCHDOG_PID": str(os.getpid())})
    notifier.ready("serving 3 profiles")
    notifier.watchdog()
    assert server.recv(4096) == b"READY=1\nSTATUS=serving 3 profiles"
    assert server.recv(4096) == b"WATCHDOG=1"
    assert notifier.watchdog_interval() == 15.0
    server.close()


def test_outside_systemd_notifier_is_silent_and_has_no_watchdog() -> None:
    notifier = Notifier({})
    notifier.ready()
    assert not notifier.enabled
    assert notifier.watchdog_interval() is None


def test_watchdog_for_another_pid_is_ignored() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert notifier.watchdog_interval() is None


def test_sent_messages_are_bounded_for_long_running_daemons() -> None:
    notifier = Notifier({})
    for _ in range(10_000):
        notifier.watchdog()
    notifier.status("latest")
    assert len(notifier.sent) == 256 and notifier.sent[-1] == "STATUS=latest"


def test_status_with_non_latin1_text_reaches_the_socket(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "notify"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    try:
        Notifier().status("sovereignty: config ✓, kernel ✗")
        assert receiver.recv(1024).decode() == "STATUS=sovereignty: config ✓, kernel ✗"
    finally:
        receiver.close()


def test_barrier_passes_a_pipe_and_waits_until_the_receiver_closes_it(
    tmp_path: Path, monkeypatch,
) -> None:
    """The receiver plays systemd: it reads BARRIER=1 with its fd, then closes the fd."""
    import array
    import threading

    path = str(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(5)
    notifier = Notifier({"NOTIFY_SOCKET": path})
    received: list[bytes] = []

    def systemd() -> None:
        received.append(server.recv(4096))
        message, ancillary, _, _ = server.recvmsg(4096, socket.CMSG_SPACE(4))
        received.append(message)
        fds = array.array("i")
        for level, kind, data in ancillary:
            assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
            fds.frombytes(data[:4])
        for fd in fds:
            os.close(fd)

    thread = threading.Thread(target=systemd)
    thread.start()
    notifier.status("3 delivered, 0 queued")
    assert notifier.barrier(timeout=5) is True
    thread.join()
    assert received == [b"STATUS=3 delivered, 0 queued", b"BARRIER=1"]
    server.close()


def test_barrier_times_out_when_nobody_reads(tmp_path: Path, monkeypatch) -> None:
    path = str(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.barrier(timeout=0.2) is False  # the fd waits, unread, in the queue
    assert Notifier({}).barrier() is False
    server.close()
