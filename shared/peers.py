"""Who is at the other end of a unix socket: the kernel's SO_PEERCRED, and the systemd units
the peer process runs in (from its cgroup).

SO_PEERCRED is recorded by the kernel when the connection is made (the connecting process,
or for a listening socket the process that called listen(): systemd itself, pid 1, for a
socket-activated one), so it names what a process is, not what it says. The units come
from `/proc/PID/cgroup`; a process can move only inside the cgroup subtree its unit was
delegated, never out of it, so every unit named in the path is one it really runs in.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from mushishi.shared.cgroups import unified_cgroup

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """The peer process of a unix socket, as the kernel recorded it."""

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> PeerCredentials | None:
    """SO_PEERCRED of a connected unix socket; None for another family or when unreadable."""
    if sock.family != socket.AF_UNIX:
        return None
    try:
        pid, uid, gid = _PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    except OSError:
        return None
    return PeerCredentials(pid, uid, gid)


def cgroup_parts(pid: int, proc: Path = Path("/proc")) -> tuple[str, ...] | None:
    """The components of process `pid`'s cgroup v2 path, outermost first (`system.slice`,
    `mushishi-tenant@x.service`, `runtime`); None when the process cannot be seen (gone, or
    hidden by ProtectProc=invisible because it belongs to another user)."""
    path = unified_cgroup(pid, proc)
    if path is None:
        return None
    return tuple(part for part in path.split("/") if part)
