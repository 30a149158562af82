"""Which callers read T1 prompts: by the units in their cgroup path, whatever uid they share."""

from __future__ import annotations

from pathlib import Path

import pytest

from mushishi.shared.t1_readers import reader_unit_of, t1_reader_unit


@pytest.mark.parametrize(("cgroup", "unit"), [
    ("/system.slice/mushishi-tenant@vllm-agent.service", "mushishi-tenant@vllm-agent.service"),
    ("/system.slice/mushishi-tenant@x.service/runtime", "mushishi-tenant@x.service"),
    ("/system.slice/mushishi-tenant@x.service/libpod-payload-0a1b", "mushishi-tenant@x.service"),
    # A sub-cgroup a tenant creates in its delegated subtree cannot hide where it is.
    ("/system.slice/mushishi-tenant@x.service/mushishi-bench.service",
     "mushishi-tenant@x.service"),
    ("/system.slice/mushishi-cpu-floor.service", "mushishi-cpu-floor.service"),
    ("/system.slice/mushishi-gpu-prepare@agent.service", "mushishi-gpu-prepare@agent.service"),
    ("/system.slice/mushishi-bench.service", None),
    ("/system.slice/mushishi-router.service", None),
    ("/system.slice/mushishi-watchdog.service", None),
    ("/user.slice/user-1000.slice/session-3.scope", None),
    ("/system.slice/mushishi-tenant.service", None),
    ("/system.slice/not-mushishi-cpu-floor.service", None),
])
def test_a_reader_is_found_by_any_unit_in_its_cgroup_path(cgroup: str, unit: str | None
                                                          ) -> None:
    assert t1_reader_unit(part for part in cgroup.split("/") if part) == unit


def _proc(root: Path, pid: int, cgroup: str) -> None:
    (root / str(pid)).mkdir(parents=True)
    (root / str(pid) / "cgroup").write_text(f"0::{cgroup}\n")


def test_a_visible_process_is_judged_by_its_own_cgroup(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    _proc(proc, 10, "/system.slice/mushishi-cpu-floor.service")
    _proc(proc, 11, "/system.slice/mushishi-bench.service")
    assert reader_unit_of(10, 500, own_uid=500, proc=proc, cgroup_root=tmp_path / "cg") == \
        "mushishi-cpu-floor.service"
    assert reader_unit_of(11, 501, own_uid=500, proc=proc, cgroup_root=tmp_path / "cg") is None


def test_a_hidden_process_of_another_user_is_found_in_the_cgroup_tree(tmp_path: Path) -> None:
    # ProtectProc=invisible hides other users' processes; cgroup.procs files stay readable.
    cgroups = tmp_path / "cg"
    prepare = cgroups / "system.slice" / "mushishi-gpu-prepare@agent.service"
    prepare.mkdir(parents=True)
    (prepare / "cgroup.procs").write_text("40\n41\n")
    podman = cgroups / "system.slice" / "mushishi-tenant@x.service" / "libpod-payload-1"
    podman.mkdir(parents=True)
    (podman / "cgroup.procs").write_text("50\n")
    assert reader_unit_of(41, 0, own_uid=500, proc=tmp_path / "proc", cgroup_root=cgroups) == \
        "mushishi-gpu-prepare@agent.service"
    assert reader_unit_of(50, 0, own_uid=500, proc=tmp_path / "proc", cgroup_root=cgroups) == \
        "mushishi-tenant@x.service"
    assert reader_unit_of(60, 0, own_uid=500, proc=tmp_path / "proc",
                          cgroup_root=cgroups) is None


def test_a_process_of_our_own_user_that_has_exited_is_taken_for_a_reader(tmp_path: Path
                                                                          ) -> None:
    # Its socket may be in a child's hands: it cannot be told apart from a tenant's.
    found = reader_unit_of(70, 500, own_uid=500, proc=tmp_path / "proc",
                           cgroup_root=tmp_path / "cg")
    assert found is not None and "exited" in found
