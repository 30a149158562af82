"""The cgroup egress filter that keeps confined units from querying any DNS server: an eBPF
program (BPF_PROG_TYPE_CGROUP_SKB) written out instruction by instruction, as plain data.

systemd attaches it to a unit with `IPEgressFilterPath=` next to its own `IPAddressDeny=`
program; a packet leaves only when every program returns 1. This one returns 0 for a TCP or
UDP packet to port 53 (DNS) or 853 (DNS over TLS) on any address, unless the destination is
one of the nameservers it was built with (the router when `[router] local_hosts` needs names
resolved); IPv6 packets whose next header is not TCP, UDP or ICMPv6 (extension headers,
fragments: the port is not where it is looked for) are dropped too. Everything else passes.

The program sees the packet from its IP header on (the cgroup hook's skb) and reads it with
the bpf_skb_load_bytes helper into an 16-byte stack buffer.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

DNS_PORTS = (53, 853)

# eBPF opcodes (linux/bpf.h, linux/bpf_common.h).
_MOV64_REG, _MOV64_IMM, _ADD64_IMM = 0xBF, 0xB7, 0x07
_AND64_IMM, _LSH64_IMM, _RSH64_IMM = 0x57, 0x67, 0x77
_LDX_B, _LDX_H, _LDX_W = 0x71, 0x69, 0x61
_JEQ_IMM, _JNE_IMM, _JA = 0x15, 0x55, 0x05
# 32-bit compares (BPF_JMP32): a 64-bit compare would sign-extend the immediate.
_JEQ32_IMM, _JNE32_IMM = 0x16, 0x56
_CALL, _EXIT = 0x85, 0x95
_HELPER_SKB_LOAD_BYTES = 26
R0, R1, R2, R3, R4, R6, R7, R8, R9, R10 = 0, 1, 2, 3, 4, 6, 7, 8, 9, 10
_BUFFER = -16  # offset of the stack buffer from the frame pointer (R10)
_PROTO_TCP, _PROTO_UDP, _PROTO_ICMPV6 = 6, 17, 58


@dataclass(frozen=True)
class _Insn:
    op: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0
    target: str | None = None  # a label, resolved into `off`


def _le32(raw: bytes) -> int:
    """Four packet bytes as a little-endian load sees them, as a signed 32-bit immediate."""
    return struct.unpack("<i", raw)[0]


def _le16(value: int) -> int:
    """A network-order 16-bit port as a little-endian u16 load sees it."""
    return struct.unpack("<H", struct.pack(">H", value))[0]


class _Assembler:
    def __init__(self) -> None:
        self.code: list[_Insn | str] = []

    def emit(self, op: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> None:
        self.code.append(_Insn(op, dst, src, off, imm))

    def jump(self, op: int, dst: int, imm: int, target: str) -> None:
        self.code.append(_Insn(op, dst, 0, 0, imm, target))

    def label(self, name: str) -> None:
        self.code.append(name)

    def load(self, size: int, *, offset: int | None = None, offset_reg: int | None = None
             ) -> None:
        """bpf_skb_load_bytes(skb, offset, fp-16, size); on failure the packet passes (it
        is too short to carry a port)."""
        self.emit(_MOV64_REG, R1, R6)
        if offset_reg is None:
            self.emit(_MOV64_IMM, R2, imm=offset or 0)
        else:
            self.emit(_MOV64_REG, R2, offset_reg)
        self.emit(_MOV64_REG, R3, R10)
        self.emit(_ADD64_IMM, R3, imm=_BUFFER)
        self.emit(_MOV64_IMM, R4, imm=size)
        self.emit(_CALL, imm=_HELPER_SKB_LOAD_BYTES)
        self.jump(_JNE_IMM, R0, 0, "pass")

    def assemble(self) -> bytes:
        positions: dict[str, int] = {}
        count = 0
        for item in self.code:
            if isinstance(item, str):
                positions[item] = count
            else:
                count += 1
        out = []
        index = 0
        for item in self.code:
            if isinstance(item, str):
                continue
            off = positions[item.target] - index - 1 if item.target else item.off
            out.append(struct.pack("<BBhi", item.op, (item.src << 4) | item.dst, off, item.imm))
            index += 1
        return b"".join(out)


def dns_filter(nameservers: Sequence[IPv4Address | IPv6Address] = ()) -> bytes:
    """The program's instructions: drop DNS to anything but `nameservers`."""
    asm = _Assembler()
    asm.emit(_MOV64_REG, R6, R1)  # R6: the skb, kept across helper calls
    asm.load(1, offset=0)
    asm.emit(_LDX_B, R8, R10, _BUFFER)
    asm.emit(_RSH64_IMM, R8, imm=4)  # R8: the IP version, kept until the verdict
    asm.jump(_JEQ_IMM, R8, 4, "ipv4")
    asm.jump(_JEQ_IMM, R8, 6, "ipv6")
    asm.jump(_JA, 0, 0, "pass")

    asm.label("ipv4")
    asm.emit(_LDX_B, R7, R10, _BUFFER)
    asm.emit(_AND64_IMM, R7, imm=0x0F)
    asm.emit(_LSH64_IMM, R7, imm=2)
    asm.emit(_ADD64_IMM, R7, imm=2)  # R7: offset of the destination port (IHL * 4 + 2)
    asm.load(1, offset=9)
    asm.emit(_LDX_B, R9, R10, _BUFFER)  # R9: the protocol
    asm.jump(_JEQ_IMM, R9, _PROTO_TCP, "port")
    asm.jump(_JEQ_IMM, R9, _PROTO_UDP, "port")
    asm.jump(_JA, 0, 0, "pass")

    asm.label("ipv6")
    asm.emit(_MOV64_IMM, R7, imm=40 + 2)
    asm.load(1, offset=6)
    asm.emit(_LDX_B, R9, R10, _BUFFER)  # the next header
    asm.jump(_JEQ_IMM, R9, _PROTO_TCP, "port")
    asm.jump(_JEQ_IMM, R9, _PROTO_UDP, "port")
    asm.jump(_JEQ_IMM, R9, _PROTO_ICMPV6, "pass")
    asm.jump(_JA, 0, 0, "drop")

    asm.label("port")
    asm.load(2, offset_reg=R7)
    asm.emit(_LDX_H, R9, R10, _BUFFER)
    for port in DNS_PORTS:
        asm.jump(_JEQ_IMM, R9, _le16(port), "dns")
    asm.jump(_JA, 0, 0, "pass")

    asm.label("dns")
    v4 = [a for a in nameservers if isinstance(a, IPv4Address)]
    v6 = [a for a in nameservers if isinstance(a, IPv6Address)]
    if v4:
        asm.jump(_JNE_IMM, R8, 4, "dns-ipv6")
        asm.load(4, offset=16)  # the destination address
        asm.emit(_LDX_W, R9, R10, _BUFFER)
        for address in v4:
            asm.jump(_JEQ32_IMM, R9, _le32(address.packed), "pass")
        asm.jump(_JA, 0, 0, "drop")
    asm.label("dns-ipv6")
    if v6:
        asm.jump(_JNE_IMM, R8, 6, "drop")
        asm.load(16, offset=24)
        for number, address in enumerate(v6):
            miss = f"not-{number}"
            for word in range(4):
                asm.emit(_LDX_W, R9, R10, _BUFFER + 4 * word)
                asm.jump(_JNE32_IMM, R9, _le32(address.packed[4 * word:4 * word + 4]), miss)
            asm.jump(_JA, 0, 0, "pass")
            asm.label(miss)
    asm.label("drop")
    asm.emit(_MOV64_IMM, R0, imm=0)
    asm.emit(_EXIT)
    asm.label("pass")
    asm.emit(_MOV64_IMM, R0, imm=1)
    asm.emit(_EXIT)
    return asm.assemble()


def probe_packet(destination: IPv4Address | IPv6Address, protocol: int, port: int) -> bytes:
    """A minimal IP packet to `destination`:`port` (TCP or UDP), for checking a loaded
    program's verdicts before it is pinned."""
    transport = struct.pack(">HH", 40000, port) + bytes(16 if protocol == _PROTO_TCP else 4)
    if isinstance(destination, IPv4Address):
        header = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(transport), 0, 0, 64,
                             protocol, 0, bytes([127, 0, 0, 1]), destination.packed)
    else:
        header = struct.pack(">IHBB16s16s", 6 << 28, len(transport), protocol, 64,
                             IPv6Address("::1").packed, destination.packed)
    return header + transport


TCP, UDP = _PROTO_TCP, _PROTO_UDP


def expected_verdicts(nameservers: Sequence[IPv4Address | IPv6Address]
                      ) -> list[tuple[str, bytes, int]]:
    """(what, packet, verdict) the program must give: DNS dropped to a local resolver and
    a public one over both families, other ports passed, each nameserver reachable."""
    others = [IPv4Address("127.0.0.1"), IPv4Address("192.0.2.200"), IPv6Address("::1")]
    cases = []
    for address in others:
        if address in nameservers:
            continue
        for protocol, name in ((UDP, "udp"), (TCP, "tcp")):
            for port in DNS_PORTS:
                cases.append((f"{name} {address} port {port}",
                              probe_packet(address, protocol, port), 0))
            cases.append((f"{name} {address} port 8000", probe_packet(address, protocol, 8000),
                          1))
    for address in nameservers:
        cases.append((f"udp nameserver {address} port 53", probe_packet(address, UDP, 53), 1))
    return cases
