"""Which addresses may this process reach? Run by a test inside a unit (its IPAddressDeny=
and IPAddressAllow= apply) and outside it (the control).

    python3 reach_probe.py OUTPUT.json ADDRESS...

For each address: `tcp` is the SSH banner's first word when port 22 answered within 3 s,
else `timeout` or the errno name (a cgroup filter drops the SYN silently, so a refused
connect looks like a black hole); `udp` is `sent`, or the errno name of `sendto()` (EPERM
is the cgroup filter saying no at once).
"""

from __future__ import annotations

import errno
import json
import socket
import sys
from pathlib import Path


def tcp(address: str) -> str:
    try:
        with socket.create_connection((address, 22), timeout=3) as connection:
            return connection.recv(64).decode("ascii", "replace").split("-")[0] or "empty"
    except TimeoutError:
        return "timeout"
    except OSError as error:
        return errno.errorcode.get(error.errno or 0, str(error))


def udp(address: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(b"probe", (address, 9))
        except OSError as error:
            return errno.errorcode.get(error.errno or 0, str(error))
    return "sent"


if __name__ == "__main__":
    result = {address: {"tcp": tcp(address), "udp": udp(address)} for address in sys.argv[2:]}
    Path(sys.argv[1]).write_text(json.dumps(result), encoding="utf-8")
