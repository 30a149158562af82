"""sd_notify for readiness, status and the watchdog, through the `sdnotify` package."""

from __future__ import annotations

import array
import contextlib
import os
import select
import socket
from collections import deque
from collections.abc import Mapping

import sdnotify

SENT_KEPT = 256
# sd_notify(3)'s variables: the supervisor's own readiness and watchdog.
NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
NOTIFY_ENV = (NOTIFY_SOCKET_ENV, "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """Talks to systemd's $NOTIFY_SOCKET; every call is a no-op outside a notify unit."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        # sdnotify itself connects to os.environ["NOTIFY_SOCKET"]; `environ` only decides
        # whether to use it and what the watchdog interval is.
        environ = os.environ if environ is None else environ
        self.enabled = bool(environ.get(NOTIFY_SOCKET_ENV))
        self._notifier = sdnotify.SystemdNotifier() if self.enabled else None
        self.watchdog_usec = _watchdog_usec(environ)
        # The latest messages sent, for `mushishi` self-checks and tests; bounded, because a
        # long-running daemon pings the watchdog every few seconds for months.
        self.sent: deque[str] = deque(maxlen=SENT_KEPT)

    def notify(self, message: str) -> None:
        """Send raw `KEY=value` lines (UTF-8: a STATUS= line may carry ✓)."""
        self.sent.append(message)
        if self._notifier is not None:
            # sdnotify.notify() encodes latin-1 and silently drops anything else.
            sock = getattr(self._notifier, "socket", None)
            if sock is None:
                return
            with contextlib.suppress(OSError):
                sock.sendall(message.encode("utf-8"))

    def barrier(self, timeout: float = 2.0) -> bool:
        """Wait until systemd has read every message sent so far (sd_notify_barrier(3)).

        A process that exits right after a STATUS= line races systemd: once the sender is
        gone systemd cannot tell whose message it was and drops it. A oneshot's last
        status therefore goes through here before it exits. True when systemd confirmed.
        """
        sock = getattr(self._notifier, "socket", None) if self._notifier else None
        if sock is None:
            return False
        read_end, write_end = os.pipe()
        try:
            try:
                sock.sendmsg([b"BARRIER=1"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                               array.array("i", [write_end]).tobytes())])
            except OSError:
                return False
            os.close(write_end)
            write_end = -1
            # systemd closes its copy of the write end once it has processed the messages
            # before it: the read end then sees end-of-file (POLLHUP).
            poller = select.poll()
            poller.register(read_end, select.POLLHUP)
            return bool(poller.poll(timeout * 1000))
        finally:
            os.close(read_end)
            if write_end >= 0:
                os.close(write_end)

    def ready(self, status: str | None = None) -> None:
        """READY=1, optionally with a status line."""
        self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> None:
        """STATUS=text, shown by `systemctl status`."""
        self.notify(f"STATUS={text}")

    def watchdog(self) -> None:
        """WATCHDOG=1: the service is healthy; send at least every watchdog_interval()."""
        self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> None:
        """STOPPING=1 at the start of a graceful stop."""
        self.notify("STOPPING=1" + (f"\nSTATUS={status}" if status else ""))

    def reloading(self) -> None:
        """RELOADING=1 while the config is re-read."""
        self.notify("RELOADING=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of WatchdogSec=), or None when not enabled."""
        return self.watchdog_usec / 2_000_000 if self.watchdog_usec else None


def _watchdog_usec(environ: Mapping[str, str]) -> int | None:
    usec = environ.get("WATCHDOG_USEC")
    pid = environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec)
    except ValueError:
        return None

