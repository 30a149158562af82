"""Socket activation: the listening sockets systemd passes (LISTEN_FDS), or our own.

A daemon behind a `.socket` unit takes its sockets from systemd, so a restart never closes
them: connections made meanwhile wait in the backlog for the next instance. Run by hand,
it binds the same address itself.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import MutableMapping
from pathlib import Path

SD_LISTEN_FDS_START = 3
# sd_listen_fds(3)'s variables: for this PID only, never for its children.
LISTEN_ENV = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def systemd_sockets(environ: MutableMapping[str, str] | None = None
                    ) -> list[socket.socket] | None:
    """The listening sockets systemd passed to this PID (non-blocking), or None."""
    environ = os.environ if environ is None else environ
    count = environ.get("LISTEN_FDS")
    if not count or environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    sockets = []
    for index in range(int(count)):
        sock = socket.socket(fileno=SD_LISTEN_FDS_START + index)
        sock.set_inheritable(False)
        sock.setblocking(False)
        sockets.append(sock)
    for name in LISTEN_ENV:
        environ.pop(name, None)  # not for children
    return sockets


def bind_unix(path: str | os.PathLike[str], mode: int = 0o660, backlog: int = 1024,
              what: str = "the socket") -> socket.socket:
    """A listening unix socket at `path` (a stale socket file is replaced); OSError names
    `what` (the config key) when it cannot be made."""
    target = Path(path)
    if target.exists() and stat.S_ISSOCK(target.stat().st_mode):
        target.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(target))
        target.chmod(mode)
    except OSError as error:
        sock.close()
        raise OSError(error.errno, f"cannot listen on {target} ({error.strerror}); check "
                                   f"{what}") from None
    sock.listen(backlog)
    sock.setblocking(False)
    return sock
