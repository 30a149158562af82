"""A live confinement probe: one UDP datagram to a non-local address, sent from where the
caller stands (its cgroup and its network namespace), and what the kernel's answer means.

What counts as confined (`True`), in exactly two forms:

* the kernel refuses to send it: `send()` fails with EPERM, which is what a cgroup egress
  filter (`IPAddressDeny=`) or a netfilter drop on the output path returns;
* the box's own tenant firewall refuses it: an ICMP "administratively prohibited" error
  (ICMP type 3 codes 9, 10, 13; ICMPv6 type 1 code 1) whose sender is an address inside
  one of `box_networks` (the tenants' bridge, gpu.docker_subnet: mushishi's REJECT rule).

Not known (`None`): no route to the probe address (`send()` fails with ENETUNREACH,
EHOSTUNREACH or EADDRNOTAVAIL, or the box itself answers "network/host unreachable"), or
a local error the kernel queued instead of an answer.

Not confined (`False`): the datagram was sent and nothing refused it within the wait (it
left), any ICMP error from an address outside `box_networks` (the datagram reached that
host, whatever it said), or `send()` failing with another errno than the ones above.

UDP, not TCP: a TCP connect() hides a cgroup filter's EPERM behind SYN retries. IP_RECVERR
is what makes the ICMP answer (type, code and sender) readable from the error queue.
Standard library only: the tenant runner runs this in a short-lived helper process.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Literal

PAYLOAD = b"mushishi confinement probe"
DEFAULT_WAIT_S = 1.0

# <linux/in.h>, <linux/in6.h>, <linux/errqueue.h>: Python 3.11 does not name them all.
IP_RECVERR = 11
IPV6_RECVERR = 25
SOL_IPV6 = 41
SO_EE_ORIGIN_LOCAL = 1
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3
_EXTENDED_ERROR = struct.Struct("=IBBBBII")

_KERNEL_REFUSED = (errno.EPERM,)
_NO_ROUTE_HERE = (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL)
# (origin, type) -> codes meaning "administratively prohibited" / "no route".
_PROHIBITED = {(SO_EE_ORIGIN_ICMP, 3): (9, 10, 13), (SO_EE_ORIGIN_ICMP6, 1): (1,)}
_NO_ROUTE = {(SO_EE_ORIGIN_ICMP, 3): (0, 1, 6, 7), (SO_EE_ORIGIN_ICMP6, 1): (0, 3)}
_ICMP_NAMES = {
    (SO_EE_ORIGIN_ICMP, 3): {0: "network unreachable", 1: "host unreachable",
                             2: "protocol unreachable", 3: "port unreachable",
                             9: "network administratively prohibited",
                             10: "host administratively prohibited",
                             13: "communication administratively prohibited"},
    (SO_EE_ORIGIN_ICMP6, 1): {0: "no route", 1: "administratively prohibited",
                              3: "address unreachable", 4: "port unreachable"},
}

Network = IPv4Network | IPv6Network


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """True (confined), False (not confined) or None (cannot tell), and one line why."""

    confined: bool | None
    detail: str


@dataclass(frozen=True, slots=True)
class IcmpAnswer:
    """An error the kernel queued for the probe's socket (struct sock_extended_err)."""

    origin: int
    type: int
    code: int
    error: int
    offender: str | None

    def describe(self) -> str:
        """`ICMP port unreachable from 203.0.113.1`, or the local error's name."""
        if self.origin == SO_EE_ORIGIN_LOCAL:
            return f"local error {errno.errorcode.get(self.error, self.error)}"
        names = _ICMP_NAMES.get((self.origin, self.type), {})
        kind = "ICMPv6" if self.origin == SO_EE_ORIGIN_ICMP6 else "ICMP"
        what = names.get(self.code, f"type {self.type} code {self.code}")
        return f"{kind} {what} from {self.offender or 'an unknown sender'}"


def _errno_name(number: int | None) -> str:
    return errno.errorcode.get(number or 0, str(number))


def classify_send_error(number: int | None, target: str) -> ProbeResult:
    """What `send()` failing with `number` says about the sender's confinement."""
    name = _errno_name(number)
    if number in _KERNEL_REFUSED:
        return ProbeResult(True, f"the kernel refused a datagram to {target} ({name})")
    if number in _NO_ROUTE_HERE:
        return ProbeResult(None, f"no route to {target} ({name}): confinement cannot be "
                                 "shown on this network")
    return ProbeResult(False, f"sending to {target} failed with {name}, not EPERM: nothing "
                              "confines the sender")


def _inside(address: str | None, networks: Sequence[Network]) -> bool:
    if address is None:
        return False
    try:
        ip = ip_address(address)
    except ValueError:
        return False
    return any(ip.version == n.version and ip in n for n in networks)


def classify_answer(answer: IcmpAnswer | Literal["replied"] | None, target: str,
                    box_networks: Sequence[Network], wait_s: float) -> ProbeResult:
    """What happened to a datagram that was sent: an ICMP error, a reply, or silence (None)."""
    if answer is None:
        return ProbeResult(False, f"a datagram to {target} left: nothing refused it within "
                                  f"{wait_s:g} s")
    if answer == "replied":
        return ProbeResult(False, f"{target} replied to a datagram: it left the box")
    if answer.origin == SO_EE_ORIGIN_LOCAL:
        return ProbeResult(None, f"sending to {target}: {answer.describe()}")
    key = (answer.origin, answer.type)
    from_box = _inside(answer.offender, box_networks)
    if from_box and answer.code in _PROHIBITED.get(key, ()):
        return ProbeResult(True, f"the box's tenant firewall refused a datagram to {target} "
                                 f"({answer.describe()})")
    if from_box and answer.code in _NO_ROUTE.get(key, ()):
        return ProbeResult(None, f"the box has no route to {target} ({answer.describe()}): "
                                 "confinement cannot be shown on this network")
    return ProbeResult(False, f"a datagram to {target} reached {answer.offender or 'a host'} "
                              f"({answer.describe()}): it left the box")


def parse_extended_error(data: bytes) -> IcmpAnswer:
    """The IP_RECVERR/IPV6_RECVERR control message: sock_extended_err + the offender."""
    error, origin, icmp_type, code, _pad, _info, _data = _EXTENDED_ERROR.unpack_from(data)
    offender = None
    address = data[_EXTENDED_ERROR.size:]
    if len(address) >= 8:
        (offender_family,) = struct.unpack_from("=H", address)
        if offender_family == socket.AF_INET:
            offender = socket.inet_ntop(socket.AF_INET, address[4:8])
        elif offender_family == socket.AF_INET6 and len(address) >= 24:
            offender = socket.inet_ntop(socket.AF_INET6, address[8:24])
    return IcmpAnswer(origin, icmp_type, code, error, offender)


def format_target(host: str, port: int) -> str:
    """`192.0.2.1:9`, `[2001:db8::1]:9`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def probe(host: str, port: int, box_networks: Sequence[Network] = (), *,
          wait_s: float = DEFAULT_WAIT_S,
          clock: Callable[[], float] = time.monotonic) -> ProbeResult:
    """Send one datagram to host:port from here and classify the kernel's answer."""
    target = format_target(host, port)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        if family == socket.AF_INET:
            sock.setsockopt(socket.SOL_IP, IP_RECVERR, 1)
        else:
            sock.setsockopt(SOL_IPV6, IPV6_RECVERR, 1)
        sock.setblocking(False)
        try:
            sock.connect((host, port))
            sock.send(PAYLOAD)
        except OSError as error:
            return classify_send_error(error.errno, target)
        return classify_answer(_await_answer(sock, wait_s, clock), target, box_networks,
                               wait_s)


def _await_answer(sock: socket.socket, wait_s: float, clock: Callable[[], float]
                  ) -> IcmpAnswer | Literal["replied"] | None:
    poller = select.poll()
    poller.register(sock, select.POLLERR | select.POLLIN)
    deadline = clock() + wait_s
    while (left := deadline - clock()) > 0:
        if not poller.poll(max(1, int(left * 1000))):
            continue
        try:
            _data, ancillary, _flags, _address = sock.recvmsg(64, 512, socket.MSG_ERRQUEUE)
        except BlockingIOError:
            # Readable without a queued error: the probe address replied.
            with contextlib.suppress(OSError):
                sock.recv(64)
                return "replied"
            continue
        for level, kind, data in ancillary:
            if (level, kind) in ((socket.SOL_IP, IP_RECVERR), (SOL_IPV6, IPV6_RECVERR)):
                return parse_extended_error(data)
    return None
