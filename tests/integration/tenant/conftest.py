"""A notify socket like systemd's, to watch what the tenant helper tells its unit, and a
network namespace where the kernel confines a tenant the way a unit's IPAddressDeny= does
(an output rule that drops all but loopback: sending fails with EPERM)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.tenant.netns import Namespaces

CONFINING_RULES = ("table inet confine {\n chain output {\n  type filter hook output priority 0;"
                   ' policy accept;\n  oif "lo" accept\n  drop\n }\n}\n')


class NotifySocket:
    """$NOTIFY_SOCKET: collects the sd_notify datagrams a process sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(path))
        self.messages: list[str] = []

    def wait_for(self, prefix: str, timeout: float = 30.0) -> str:
        """The first message (already received or arriving) that starts with `prefix`."""
        for message in self.messages:
            if message.startswith(prefix):
                return message
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.socket.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                message = self.socket.recv(65536).decode()
            except TimeoutError:
                break
            self.messages.append(message)
            if message.startswith(prefix):
                return message
        raise AssertionError(f"no {prefix!r} notification; got {self.messages}")

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


@pytest.fixture
def unconfined_netns() -> Iterator[Namespaces]:
    """A namespace with a default route to nowhere: a datagram to anywhere leaves."""
    namespaces = Namespaces(with_box=False).build()
    yield namespaces
    namespaces.destroy()


@pytest.fixture
def confined_netns(unconfined_netns: Namespaces) -> Namespaces:
    """The same, with the kernel refusing everything but loopback."""
    unconfined_netns.nft(unconfined_netns.tenant, CONFINING_RULES)
    return unconfined_netns
