"""The cgroup v2 hierarchy, as seen from this process: where it is mounted and who is where."""

from __future__ import annotations

from pathlib import Path


def cgroup2_mount(mounts: str) -> Path | None:
    """The cgroup2 mount point in /proc/self/mounts text: /sys/fs/cgroup (unified) or
    /sys/fs/cgroup/unified (hybrid); None without one."""
    points = {line.split()[1] for line in mounts.splitlines()
              if len(line.split()) > 2 and line.split()[2] == "cgroup2"}
    for candidate in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        if candidate in points:
            return Path(candidate)
    return None


def unified_cgroup(pid: int | str, proc: Path = Path("/proc")) -> str | None:
    """The cgroup v2 path of a process (`/system.slice/x.service`), None when unreadable."""
    try:
        text = (proc / str(pid) / "cgroup").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def unit_root(cgroup: str) -> str | None:
    """The systemd service cgroup that `cgroup` lies in (itself or an ancestor), else None."""
    parts = cgroup.split("/")
    for end in range(len(parts), 0, -1):
        if parts[end - 1].endswith(".service"):
            return "/".join(parts[:end])
    return None


def processes_by_cgroup(root: Path) -> dict[Path, list[int]]:
    """Every non-empty cgroup under `root` (itself included) and the processes in it."""
    found: dict[Path, list[int]] = {}
    for procs in sorted(root.rglob("cgroup.procs")):
        try:
            pids = [int(line) for line in procs.read_text().split()]
        except (OSError, ValueError):
            continue
        if pids:
            found[procs.parent] = pids
    return found
