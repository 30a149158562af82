"""The booted-systemd sandbox itself: it boots for real and leaves nothing behind."""

from __future__ import annotations

import os
from pathlib import Path

from devtools.sandbox import Sandbox


def _host_mounts() -> str:
    return Path("/proc/self/mountinfo").read_text()


def test_sandbox_boots_systemd_as_pid1_with_bus_and_journal(sandbox: Sandbox) -> None:
    assert sandbox.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
    assert sandbox.systemctl("is-system-running", check=False).stdout.strip() in (
        "running", "degraded")
    assert sandbox.is_active("dbus.service") == "active"
    assert sandbox.is_active("systemd-journald.service") == "active"
    # Its own network namespace: only loopback.
    links = sandbox.run(["ip", "-o", "link"]).stdout
    assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]


def test_image_services_stay_off_unless_a_test_starts_them(sandbox: Sandbox) -> None:
    # Installing a Debian package enables its unit in the machine image (make test installs
    # prometheus and prometheus-node-exporter): the sandbox masks them, so no test gets a
    # Prometheus or a node_exporter it did not start itself.
    for unit in ("prometheus.service", "prometheus-node-exporter.service"):
        assert sandbox.systemctl("is-enabled", unit, check=False).stdout.strip() == "masked"
        assert sandbox.is_active(unit) == "inactive"
    assert sandbox.run(["curl", "-sS", "--max-time", "2", "http://127.0.0.1:9100/metrics"],
                       check=False).returncode != 0


def test_sandbox_runs_no_container_engine_unless_a_test_starts_one(sandbox: Sandbox) -> None:
    # docker.io and podman enable sockets and services in the machine image.
    for unit in ("docker.socket", "docker.service", "containerd.service", "podman.socket",
                 "podman.service", "podman-restart.service"):
        assert sandbox.is_active(unit) == "inactive", unit


def test_sandbox_writes_never_reach_the_host(sandbox: Sandbox) -> None:
    sandbox.run(["sh", "-c", "echo inside > /etc/mushishi-sandbox-probe"])
    assert sandbox.path("/etc/mushishi-sandbox-probe").read_text() == "inside\n"
    assert not Path("/etc/mushishi-sandbox-probe").exists()


def test_sandbox_stop_leaves_no_process_mount_or_directory() -> None:
    box = Sandbox().boot()
    pid, directory = box.pid, box.dir
    assert pid is not None and Path(f"/proc/{pid}").exists()
    box.stop()
    assert not Path(f"/proc/{pid}").exists()
    assert not directory.exists()
    assert str(directory) not in _host_mounts()


def test_sandbox_dies_with_the_process_that_booted_it(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    script = (
        "import sys, time\n"
        "from devtools.sandbox import Sandbox\n"
        "box = Sandbox().boot()\n"
        "print(box.pid, box.dir, flush=True)\n"
        "time.sleep(600)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    pid_text, directory = child.stdout.readline().split()
    init_pid = int(pid_text)
    assert Path(f"/proc/{init_pid}").exists()
    os.kill(child.pid, 9)  # no cleanup code runs: the kernel must take the sandbox down
    child.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{init_pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{init_pid}").exists()
    assert directory not in _host_mounts()
    Sandbox(Path(directory).name).stop()  # removes the (unmounted) state directory


def test_concurrent_sandboxes_have_their_own_cgroup_trees(sandbox: Sandbox) -> None:
    unit = "mushishi-cgroup-probe.service"
    with Sandbox() as other:
        for box in (sandbox, other):
            box.run(["systemd-run", "--unit", unit, "/bin/sleep", "300"])
        ours = sandbox.systemctl("show", "-p", "MainPID", "--value", unit).stdout.strip()
        other.systemctl("stop", unit)  # must not touch the first sandbox's process
        assert sandbox.is_active(unit) == "active"
        assert sandbox.systemctl("show", "-p", "MainPID", "--value", unit).stdout.strip() == ours
        assert other.run(["stat", "-fc", "%T", "/sys/fs/cgroup"]).stdout.strip() == "cgroup2fs"
        host_view = Path(f"/proc/{other.pid}/cgroup").read_text()
        assert f"/mushishi-sandbox/{other.name}/" in host_view
    sandbox.systemctl("stop", unit)
