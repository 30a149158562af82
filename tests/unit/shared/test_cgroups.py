"""Reading the cgroup v2 hierarchy: its mount, a process's cgroup, a unit's subtree."""

from __future__ import annotations

from pathlib import Path

from mushishi.shared.cgroups import cgroup2_mount, processes_by_cgroup, unified_cgroup, unit_root


def test_the_unified_mount_is_found_in_either_layout() -> None:
    unified = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\nproc /proc proc rw 0 0\n"
    hybrid = ("tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n"
              "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n")
    assert cgroup2_mount(unified) == Path("/sys/fs/cgroup")
    assert cgroup2_mount(hybrid) == Path("/sys/fs/cgroup/unified")
    assert cgroup2_mount("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n") is None


def test_a_process_cgroup_is_its_unified_line(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "cgroup").write_text("1:cpu:/x\n0::/system.slice/a.service/runtime\n")
    assert unified_cgroup(42, tmp_path) == "/system.slice/a.service/runtime"
    assert unified_cgroup(43, tmp_path) is None


def test_the_unit_root_is_the_service_around_a_cgroup() -> None:
    service = "/system.slice/system-mushishi\\x2dtenant.slice/mushishi-tenant@x.service"
    assert unit_root(service + "/runtime") == service
    assert unit_root(service) == service
    assert unit_root("/user.slice/session-1.scope") is None


def test_processes_are_listed_per_non_empty_cgroup(tmp_path: Path) -> None:
    (tmp_path / "runtime").mkdir()
    (tmp_path / "libpod-payload-abc").mkdir()
    (tmp_path / "cgroup.procs").write_text("")
    (tmp_path / "runtime" / "cgroup.procs").write_text("10\n11\n")
    (tmp_path / "libpod-payload-abc" / "cgroup.procs").write_text("20\n")
    assert processes_by_cgroup(tmp_path) == {tmp_path / "libpod-payload-abc": [20],
                                             tmp_path / "runtime": [10, 11]}
