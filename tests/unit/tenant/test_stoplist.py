"""Who holds the VRAM, what the guard says, and what the stop-list may stop."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mushishi.services.tenant.drain import default_stop_command
from mushishi.services.tenant.guard import refusal_line
from mushishi.services.tenant.stoplist import (
    Container,
    container_id_in,
    describe_holders,
    plan_freeing,
    process_matches,
)
from mushishi.shared.gpu import GpuProcess, GpuSnapshot

DOCKER_ID = "a" * 64
CGROUPS = {
    10: "0::/system.slice/ollama.service\n",
    11: f"0::/system.slice/docker-{DOCKER_ID}.scope\n",
    12: "0::/system.slice/system-mushishi\\x2dtenant.slice/mushishi-tenant@vllm.service\n",
    13: "0::/user.slice/user-1000.slice/session-3.scope\n",
}
SNAPSHOT = GpuSnapshot(total_mib=32607, used_mib=25000, processes=(
    GpuProcess(10, "ollama", 9000), GpuProcess(11, "ollama", 6000),
    GpuProcess(12, "ollama", 4000), GpuProcess(13, "blender", 5000)))


def test_describe_holders_biggest_first_with_where_and_whether_listed() -> None:
    assert describe_holders(SNAPSHOT, ["ollama"], CGROUPS.get) == [
        "ollama (pid 10, 9000 MiB, in stop-list)",
        f"ollama (pid 11, 6000 MiB, container {DOCKER_ID[:12]}, in stop-list)",
        "blender (pid 13, 5000 MiB, not in stop-list)",
        "ollama (pid 12, 4000 MiB, a mushishi tenant, in stop-list)",
        "1000 MiB not attributed to a process",
    ]


def test_plan_freeing_takes_only_listed_names_and_never_a_tenant() -> None:
    containers = [Container("1" * 64, "ollama"), Container("2" * 64, "grafana")]
    plan = plan_freeing(SNAPSHOT, ["ollama"], containers, CGROUPS.get, own_pids=[11])
    assert [p.pid for p in plan.processes] == [10]
    assert plan.containers == (Container("1" * 64, "ollama"),)


def test_plan_freeing_with_an_empty_stop_list_stops_nothing() -> None:
    plan = plan_freeing(SNAPSHOT, [], [Container("1" * 64, "ollama")], CGROUPS.get)
    assert plan.processes == () and plan.containers == ()
    assert len(plan.report) == 5


@pytest.mark.parametrize(("cgroup", "found"), [
    (f"0::/system.slice/docker-{DOCKER_ID}.scope", DOCKER_ID),
    (f"12:memory:/docker/{DOCKER_ID}", DOCKER_ID),
    ("0::/system.slice/ssh.service", None),
])
def test_container_id_in_cgroup_paths(cgroup: str, found: str | None) -> None:
    assert container_id_in(cgroup) == found


def test_process_matches_checks_the_running_program(tmp_path: Path) -> None:
    program = tmp_path / "ollama"
    program.write_bytes(Path("/usr/bin/sleep").read_bytes())
    program.chmod(0o755)
    child = subprocess.Popen([str(program), "30"])
    try:
        assert process_matches(child.pid, "ollama")
        assert not process_matches(child.pid, "blender")
        assert not process_matches(os.getpid(), "ollama")
        assert process_matches(os.getpid(), Path(sys.executable).resolve().name)
    finally:
        child.kill()
        child.wait()
    assert not process_matches(child.pid, "ollama")


def test_guard_line_names_tenant_need_free_and_holders() -> None:
    line = refusal_line("vllm-forensic", 28000, SNAPSHOT, ["ollama"], CGROUPS.get)
    assert line == (
        "tenant vllm-forensic does not fit: needs 28000 MiB of VRAM, 7607 MiB free of "
        "32607 MiB; held by: ollama (pid 10, 9000 MiB, in stop-list); ollama (pid 11, "
        f"6000 MiB, container {DOCKER_ID[:12]}, in stop-list); blender (pid 13, 5000 MiB, "
        "not in stop-list); ollama (pid 12, 4000 MiB, a mushishi tenant, in stop-list); "
        "1000 MiB not attributed to a process")
    assert "\n" not in line


def test_guard_passes_a_tenant_that_fits() -> None:
    assert refusal_line("tts", 7607, SNAPSHOT, [], CGROUPS.get) is None


@pytest.mark.parametrize(("command", "stop"), [
    (["docker", "compose", "-f", "/etc/mushishi/compose/vllm.yml", "up"],
     ["docker", "compose", "-f", "/etc/mushishi/compose/vllm.yml", "down"]),
    (["/usr/bin/docker", "compose", "-p", "x", "up", "--abort-on-container-exit"],
     ["/usr/bin/docker", "compose", "-p", "x", "down"]),
    (["docker-compose", "-f", "a.yml", "up"], ["docker-compose", "-f", "a.yml", "down"]),
    (["docker", "run", "--rm", "vllm/vllm-openai"], None),
    (["/opt/comfyui/venv/bin/python", "main.py"], None),
])
def test_default_stop_command_turns_compose_up_into_down(command: list[str],
                                                         stop: list[str] | None) -> None:
    assert default_stop_command(command) == stop
