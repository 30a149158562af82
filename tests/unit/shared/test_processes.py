"""pid_alive against real processes: this one, a reaped child, init, impossible PIDs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mushishi.shared.processes import pid_alive


def test_pid_alive_own_process_is_alive() -> None:
    assert pid_alive(os.getpid()) is True


def test_pid_alive_reaped_child_is_gone() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    pid = process.pid
    process.wait()
    assert pid_alive(pid) is False


def test_pid_alive_other_users_process_counts_as_alive() -> None:
    # Asked by an unprivileged user, kill(1, 0) fails with EPERM: PID 1 still exists.
    code = "from mushishi.shared.processes import pid_alive; print(pid_alive(1))"
    argv = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        answer = subprocess.run(argv, user="nobody", capture_output=True, text=True,
                                check=True, timeout=60)
    else:
        answer = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60)
    assert answer.stdout.strip() == "True"


@pytest.mark.parametrize("pid", [0, -1, -12345])
def test_pid_alive_non_positive_pid_is_not_a_process(pid: int) -> None:
    assert pid_alive(pid) is False
