"""What an aiohttp request says about its caller: the unix peer's credentials, a loggable
request id."""

from __future__ import annotations

import os
import re

from aiohttp import web

from mushishi.shared.peers import PeerCredentials, peer_credentials

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def request_peer(request: web.Request) -> PeerCredentials | None:
    """The process at the other end of a unix socket (SO_PEERCRED), else None."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    return peer_credentials(sock) if sock is not None else None


def peer_uid(request: web.Request) -> int | None:
    """The uid of the process at the other end of a unix socket (SO_PEERCRED), else None."""
    peer = request_peer(request)
    return peer.uid if peer is not None else None


def request_id_for(request: web.Request) -> str:
    """The caller's X-Request-Id when it is short and plain, else a fresh random one."""
    given = request.headers.get("X-Request-Id")
    if given and _REQUEST_ID.match(given):
        return given
    return os.urandom(8).hex()
