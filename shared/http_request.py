"""What an aiohttp request says about its caller: the unix peer's uid, a loggable request id."""

from __future__ import annotations

import os
import re
import socket
import struct

from aiohttp import web

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def peer_uid(request: web.Request) -> int | None:
    """The uid of the process at the other end of a unix socket (SO_PEERCRED), else None."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        _, uid, _ = _PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    except OSError:
        return None
    return uid


def request_id_for(request: web.Request) -> str:
    """The caller's X-Request-Id when it is short and plain, else a fresh random one."""
    given = request.headers.get("X-Request-Id")
    if given and _REQUEST_ID.match(given):
        return given
    return os.urandom(8).hex()
