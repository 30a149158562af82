"""Read the router's GET /status over its unix socket (for the CLI and the watchdog).

The router answers /status without an API key on its unix socket (docs/router.md has the
JSON). Plain stdlib HTTP/1.1 over AF_UNIX, so a CLI command stays fast and dependency-free.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

DEFAULT_SOCKET = "/run/mushishi/router.sock"


class RouterUnavailable(Exception):
    """The router could not be asked; the message says what to check."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def fetch_status(socket_path: str = DEFAULT_SOCKET, timeout: float = 5.0) -> dict[str, Any]:
    """The router's /status JSON; RouterUnavailable if it cannot be had."""
    connection = _UnixConnection(socket_path, timeout)
    try:
        connection.request("GET", "/status")
        response = connection.getresponse()
        body = response.read()
    except FileNotFoundError:
        raise RouterUnavailable(f"no router socket at {socket_path} (is mushishi-router.socket "
                                "running? `systemctl status mushishi-router.socket`)") from None
    except PermissionError:
        raise RouterUnavailable(f"permission denied on {socket_path} (run as root or as a "
                                "member of group mushishi)") from None
    except (OSError, http.client.HTTPException) as error:
        raise RouterUnavailable(f"cannot read the router's status at {socket_path}: "
                                f"{error}") from None
    finally:
        connection.close()
    if response.status != 200:
        raise RouterUnavailable(f"the router answered {response.status} to GET /status")
    try:
        return json.loads(body)
    except ValueError:
        raise RouterUnavailable("the router's /status is not JSON") from None
