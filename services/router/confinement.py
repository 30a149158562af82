"""The router's check of its own kernel confinement, run at start.

`IPAddressDeny=any` silently does nothing on a kernel without cgroup BPF, so the router
tries a short TCP connect to a reserved non-local address (TEST-NET-1 by default). Under a
working `IPAddressDeny=` the kernel refuses it at once with EPERM. Any other outcome means a
packet left (or could leave) the router: the kernel layer is not in force. When the box has
no route to that address the check cannot tell, and says so (`None`).
"""

from __future__ import annotations

import asyncio
import errno
import socket
from dataclasses import dataclass

from mushishi.shared.config.router import parse_listen

_KERNEL_REFUSED = (errno.EPERM, errno.EACCES)
_NO_ROUTE_HERE = (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL)


@dataclass(frozen=True, slots=True)
class Confinement:
    """The result: True (in force), False (not in force) or None (cannot tell), and why."""

    kernel: bool | None
    detail: str


async def check_kernel_confinement(probe: str, wait_s: float = 1.0) -> Confinement:
    """Try to reach `probe` (IP:PORT); the kernel must refuse it."""
    host, port = parse_listen(probe)
    family = socket.AF_INET6 if ":" in str(host) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        code = sock.connect_ex((str(host), int(port)))
        if code in _KERNEL_REFUSED:
            return Confinement(True, f"the kernel refused a connection to {probe} "
                                     f"({errno.errorcode[code]}): IPAddressDeny= is in force")
        if code in _NO_ROUTE_HERE:
            return Confinement(None, f"no route to {probe} ({errno.errorcode[code]}): the "
                                     "kernel confinement cannot be shown on this network")
        if code == 0:
            return Confinement(False, f"connected to {probe}: the kernel does not confine "
                                      "the router (is IPAddressDeny= set and cgroup BPF on?)")
        if code != errno.EINPROGRESS:
            return Confinement(False, f"connecting to {probe} failed with "
                                      f"{errno.errorcode.get(code, code)}, not EPERM: the "
                                      "kernel does not confine the router")
        loop = asyncio.get_running_loop()
        writable: asyncio.Future[None] = loop.create_future()
        loop.add_writer(sock.fileno(), lambda: writable.done() or writable.set_result(None))
        try:
            await asyncio.wait_for(writable, wait_s)
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            outcome = errno.errorcode.get(code, "connected") if code else "connected"
        except TimeoutError:
            outcome = f"no answer in {wait_s:g}s"
        finally:
            loop.remove_writer(sock.fileno())
        return Confinement(False, f"a packet to {probe} left the router ({outcome}): the "
                                  "kernel does not confine it (IPAddressDeny= not in force)")
    finally:
        sock.close()
