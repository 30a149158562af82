"""Which units read T1 prompts, and so may reach only sovereign (T1, T1-strict) profiles.

The model servers see every T1 prompt in clear: the GPU tenants, the CPU floor, and the GPU
preparation that runs beside them. Were one of them able to send a request to a T2 or T3
profile, it could launder a T1 prompt to the cloud through the router. They all run as
user `mushishi` (gpu-prepare as root), like the router and the egress, so the router tells
them apart by unit (the cgroup of the caller, shared/peers.py), not by uid; and
`config check` refuses a `router.unix_peers` mapping of one of their users to a profile
that is not sovereign. The bench runs as a user of its own, `mushishi-bench`, so that it
may be mapped to any profile it measures.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase
from pathlib import Path

from mushishi.shared.peers import cgroup_parts

# units/*.service: the model servers and what runs in their transaction.
T1_READER_UNITS: tuple[str, ...] = ("mushishi-tenant@*.service", "mushishi-cpu-floor.service",
                                    "mushishi-gpu-prepare@*.service")
# The users they run as (User= of those units).
T1_READER_USERS: tuple[str, ...] = ("mushishi", "root")
# The bench's own user (units/mushishi.sysusers.conf, units/mushishi-bench.service).
BENCH_USER = "mushishi-bench"
# Users `mushishi install` creates: `config check` accepts them in router.unix_peers before
# they exist.
MUSHISHI_USERS: tuple[str, ...] = ("mushishi", BENCH_USER)
EGRESS_UNIT = "mushishi-egress.service"


def t1_reader_unit(cgroup_parts: Iterable[str]) -> str | None:
    """The unit that reads T1 prompts among a process's cgroup path components, or None."""
    for part in cgroup_parts:
        if any(fnmatchcase(part, pattern) for pattern in T1_READER_UNITS):
            return part
    return None


def reader_unit_of(pid: int, uid: int, *, own_uid: int, proc: Path = Path("/proc"),
                   cgroup_root: Path = Path("/sys/fs/cgroup")) -> str | None:
    """The unit reading T1 prompts that process `pid` (a unix peer, `uid` as SO_PEERCRED
    says) runs in, or None when it runs in none.

    From /proc/PID/cgroup when the process is visible. A process of another user is hidden
    from a unit with ProtectProc=invisible: the cgroup tree is searched instead (every
    `cgroup.procs` under the reader units). A process of our own user that is not there has
    exited since it connected, and its socket may be in a child's hands: it cannot be told
    apart, so it is taken for a reader (refused anything but sovereign profiles)."""
    parts = cgroup_parts(pid, proc)
    if parts is not None:
        return t1_reader_unit(parts)
    if uid == own_uid:
        return f"a process that has exited (pid {pid})"
    slices = [cgroup_root, *cgroup_root.glob("*.slice")]
    for directory in slices:
        for pattern in T1_READER_UNITS:
            for unit in directory.glob(pattern):
                for procs in unit.rglob("cgroup.procs"):
                    try:
                        if str(pid) in procs.read_text().split():
                            return unit.name
                    except OSError:
                        continue
    return None
