"""The router's check of its own kernel confinement, run at start.

`IPAddressDeny=any` silently does nothing on a kernel without cgroup BPF, so the router
sends one UDP datagram to a reserved non-local address (TEST-NET-1, discard port, by
default). Under a working `IPAddressDeny=` the kernel's cgroup egress filter drops it and
`sendto()` fails with EPERM. If the datagram is sent, a packet left the router: the kernel
layer is not in force. Without a route to that address the check cannot tell, and says so.

UDP, not TCP: a TCP connect() hides the filter's EPERM (the SYN is silently retried until the
connect times out), which cannot be told apart from a black hole.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from mushishi.shared.config.router import parse_listen
from mushishi.shared.confinement_probe import classify_send_error


@dataclass(frozen=True, slots=True)
class Confinement:
    """The result: True (in force), False (not in force) or None (cannot tell), and why."""

    kernel: bool | None
    detail: str


def check_kernel_confinement(probe: str) -> Confinement:
    """Send one datagram to `probe` (IP:PORT); the kernel must refuse it (the rule of what a
    refusal means is shared with the tenants' probe: shared/confinement_probe.py)."""
    host, port = parse_listen(probe)
    family = socket.AF_INET6 if ":" in str(host) else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        try:
            sock.sendto(b"mushishi confinement probe", (str(host), int(port)))
        except OSError as error:
            verdict = classify_send_error(error.errno, probe)
            if verdict.confined:
                return Confinement(True, f"{verdict.detail}: IPAddressDeny= is in force")
            if verdict.confined is None:
                return Confinement(None, verdict.detail)
            return Confinement(False, f"{verdict.detail}: the kernel does not confine the "
                                      "router")
    return Confinement(False, f"a datagram to {probe} left the router: the kernel does not "
                              "confine it (is IPAddressDeny= set, and cgroup BPF available?)")
