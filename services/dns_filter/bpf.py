"""The bpf(2) system call, for the three things mushishi-dns-filter does: load a cgroup skb
program, run it on a test packet, and pin it in the BPF filesystem where systemd's
`IPEgressFilterPath=` finds it."""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

_SYSCALL_NUMBERS = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361,
                    "s390x": 351, "riscv64": 280}
_PROG_LOAD, _OBJ_PIN, _PROG_TEST_RUN = 5, 6, 10
PROG_TYPE_CGROUP_SKB = 8
_ATTACH_CGROUP_INET_EGRESS = 1
_ATTR_SIZE = 128
_LOG_SIZE = 1 << 16
_ETHERNET_HEADER = 14


class BpfError(OSError):
    """A bpf(2) call failed; the message names the step and, for a load, the verifier's log."""


def _syscall(command: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    machine = os.uname().machine
    if machine not in _SYSCALL_NUMBERS:
        raise BpfError(0, f"bpf(2): unknown system call number on {machine}")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    result = int(libc.syscall(_SYSCALL_NUMBERS[machine], command, attr, len(attr)))
    if result < 0:
        number = ctypes.get_errno()
        raise BpfError(number, os.strerror(number))
    return result


def _attr(payload: bytes) -> ctypes.Array[ctypes.c_char]:
    return ctypes.create_string_buffer(payload.ljust(_ATTR_SIZE, b"\0"), _ATTR_SIZE)


def load_cgroup_skb(code: bytes, name: str) -> int:
    """Load `code` as a cgroup skb egress program; its file descriptor."""
    instructions = ctypes.create_string_buffer(code, len(code))
    license_text = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(_LOG_SIZE)
    attr = _attr(struct.pack(
        "<IIQQIIQII16sII", PROG_TYPE_CGROUP_SKB, len(code) // 8,
        ctypes.addressof(instructions), ctypes.addressof(license_text), 1, _LOG_SIZE,
        ctypes.addressof(log), 0, 0, name.encode()[:15], 0, _ATTACH_CGROUP_INET_EGRESS))
    try:
        return _syscall(_PROG_LOAD, attr)
    except BpfError as error:
        verifier = log.value.decode("utf-8", "replace").strip()
        raise BpfError(error.errno, f"loading the BPF program failed: {error.strerror}"
                       + (f"; the verifier said:\n{verifier}" if verifier else "")) from None


def run_on_packet(fd: int, packet: bytes) -> int:
    """The program's verdict (1 pass, 0 drop) on one IP packet (BPF_PROG_TEST_RUN)."""
    frame = bytes(12) + (b"\x86\xdd" if packet[:1] and packet[0] >> 4 == 6 else b"\x08\x00")
    data = ctypes.create_string_buffer(frame + packet, _ETHERNET_HEADER + len(packet))
    attr = _attr(struct.pack("<IIIIQQ", fd, 0, len(data), 0, ctypes.addressof(data), 0))
    try:
        _syscall(_PROG_TEST_RUN, attr)
    except BpfError as error:
        raise BpfError(error.errno, f"test-running the BPF program failed: "
                       f"{error.strerror}") from None
    return struct.unpack_from("<I", attr.raw, 4)[0]


def bpffs_mount(path: Path, mounts: str | None = None) -> str | None:
    """The BPF filesystem `path` lies on, or None when it is on another filesystem."""
    text = mounts if mounts is not None else Path("/proc/self/mounts").read_text()
    best: tuple[str, str] | None = None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        if (path == Path(point) or Path(point) in path.parents) and (
                best is None or len(point) > len(best[0])):
            best = (point, fields[2])
    return best[0] if best and best[1] == "bpf" else None


def pin(fd: int, path: Path) -> None:
    """Pin the program at `path`, replacing what was there in one step (a unit starting
    meanwhile finds the old program or the new one, never none)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}-new")  # bpffs refuses names with a dot
    temporary.unlink(missing_ok=True)
    name = ctypes.create_string_buffer(str(temporary).encode())
    try:
        _syscall(_OBJ_PIN, _attr(struct.pack("<QII", ctypes.addressof(name), fd, 0)))
    except BpfError as error:
        raise BpfError(error.errno, f"pinning the BPF program at {temporary} failed: "
                       f"{error.strerror}") from None
    temporary.rename(path)
