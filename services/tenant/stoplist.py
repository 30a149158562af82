"""Who holds the VRAM, and what may be stopped to get it back.

Only names in `[gpu] stop_list` are ever stopped: GPU processes (as NVML names them) and
Docker containers. Everything else is reported and left alone, and so are the processes of
mushishi's own tenants, whatever their name.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mushishi.services.tenant.docker_api import Container
from mushishi.shared.gpu import GpuProcess, GpuSnapshot

_CONTAINER_IN_CGROUP = re.compile(r"(?:docker[-/]|/docker/)([0-9a-f]{64})")
TENANT_CGROUP_MARK = "mushishi-tenant@"


@dataclass(frozen=True, slots=True)
class FreeingPlan:
    """What to stop, and one report line per thing that holds GPU memory."""

    processes: tuple[GpuProcess, ...]
    containers: tuple[Container, ...]
    report: tuple[str, ...]


def cgroup_of(pid: int, proc: Path = Path("/proc")) -> str:
    """The cgroup path of a process ("" when unreadable)."""
    try:
        return (proc / str(pid) / "cgroup").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def container_id_in(cgroup: str) -> str | None:
    """The Docker container id in a cgroup path, if any."""
    match = _CONTAINER_IN_CGROUP.search(cgroup)
    return match.group(1) if match else None


def describe_holders(snapshot: GpuSnapshot, stop_list: Sequence[str],
                     cgroups: Callable[[int], str] = cgroup_of) -> list[str]:
    """One short description per GPU process, biggest first, saying whether it may be stopped."""
    lines = []
    for process in sorted(snapshot.processes, key=lambda p: -p.used_mib):
        cgroup = cgroups(process.pid)
        where = ""
        if TENANT_CGROUP_MARK in cgroup:
            where = ", a mushishi tenant"
        elif (container := container_id_in(cgroup)) is not None:
            where = f", container {container[:12]}"
        listed = "in stop-list" if process.name in stop_list else "not in stop-list"
        lines.append(f"{process.name} (pid {process.pid}, {process.used_mib} MiB{where}, "
                     f"{listed})")
    attributed = sum(p.used_mib for p in snapshot.processes)
    if snapshot.used_mib > attributed:
        lines.append(f"{snapshot.used_mib - attributed} MiB not attributed to a process")
    return lines


def plan_freeing(snapshot: GpuSnapshot, stop_list: Sequence[str],
                 containers: Iterable[Container],
                 cgroups: Callable[[int], str] = cgroup_of,
                 own_pids: Sequence[int] = ()) -> FreeingPlan:
    """Stop-list GPU processes and containers to stop; mushishi's tenants never qualify."""
    listed = set(stop_list)
    processes = tuple(
        p for p in snapshot.processes
        if p.name in listed and p.pid not in own_pids and p.pid > 1
        and TENANT_CGROUP_MARK not in cgroups(p.pid)
    )
    chosen = tuple(c for c in containers if c.name in listed)
    return FreeingPlan(processes, chosen, tuple(describe_holders(snapshot, stop_list, cgroups)))


def process_matches(pid: int, name: str, proc: Path = Path("/proc")) -> bool:
    """Whether `pid` still runs the program `name` (guards against a reused pid)."""
    with contextlib.suppress(OSError):
        if (proc / str(pid) / "exe").readlink().name == name:
            return True
    with contextlib.suppress(OSError):
        # comm is cut at 15 characters.
        return (proc / str(pid) / "comm").read_text().strip() == name[:15]
    return False


def signal_process(pid: int, signum: signal.Signals) -> bool:
    """Send a signal; False when the process is already gone."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True
