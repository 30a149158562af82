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
