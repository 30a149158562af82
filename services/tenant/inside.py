"""`python -m mushishi.services.tenant.inside`: the confinement probe, sent from inside
another process's cgroup and network namespace (a tenant's container).

The tenant runner starts this helper for each of its containers: the helper moves itself
into the container's cgroup (so the container's own cgroup filters apply to its socket,
and the runner's unit's do not), joins the container's network namespace, sends the probe
and prints one JSON line `{"confined": true|false|null, "detail": "..."}`. Joining needs
root with CAP_SYS_ADMIN and CAP_SYS_PTRACE (the runtime drop-in of container tenants).
Standard library only: it starts every probe interval.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
from collections.abc import Sequence
from ipaddress import ip_network
from pathlib import Path

from mushishi.shared.cgroups import cgroup2_mount, unified_cgroup
from mushishi.shared.confinement_probe import ProbeResult, probe

CLONE_NEWNET = 0x40000000


class EnterError(Exception):
    """The helper could not stand where the tenant stands; the message says why."""


def _setns(fd: int) -> None:
    setns = getattr(os, "setns", None)  # Python 3.12+
    if setns is not None:
        setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))


def enter(pid: int, proc: Path = Path("/proc")) -> str:
    """Move this process into `pid`'s cgroup and network namespace; say where that is."""
    cgroup = unified_cgroup(pid, proc)
    if cgroup is None:
        raise EnterError(f"process {pid} is gone (no {proc}/{pid}/cgroup)")
    if unified_cgroup("self", proc) != cgroup:
        mount = cgroup2_mount((proc / "self" / "mounts").read_text())
        if mount is None:
            raise EnterError("no cgroup2 hierarchy is mounted")
        try:
            (mount / cgroup.lstrip("/") / "cgroup.procs").write_text(str(os.getpid()))
        except OSError as error:
            raise EnterError(f"cannot join cgroup {cgroup}: {error.strerror}") from None
    try:
        theirs = proc / str(pid) / "ns" / "net"
        if theirs.stat().st_ino != (proc / "self" / "ns" / "net").stat().st_ino:
            fd = os.open(theirs, os.O_RDONLY)
            try:
                _setns(fd)
            finally:
                os.close(fd)
    except OSError as error:
        raise EnterError(f"cannot join the network namespace of process {pid}: "
                         f"{error.strerror}") from None
    return cgroup


def main(argv: Sequence[str] | None = None) -> int:
    """Enter, probe, print the result as one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m mushishi.services.tenant.inside")
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--wait", type=float, default=1.0)
    parser.add_argument("--box-network", action="append", default=[])
    args = parser.parse_args(argv)
    try:
        enter(args.pid)
        result = probe(args.host, args.port, [ip_network(n) for n in args.box_network],
                       wait_s=args.wait)
    except EnterError as error:
        result = ProbeResult(None, str(error))
    sys.stdout.write(json.dumps({"confined": result.confined, "detail": result.detail}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
