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


async def test_terminate_stops_a_stopped_child_and_kills_one_that_ignores_sigterm() -> None:
    """The CPU floor's llama-server and a tenant's command stop the same way (real
    processes): a SIGSTOPped child still ends, and one ignoring SIGTERM is killed."""
    import asyncio
    import signal
    import sys

    from mushishi.shared.processes import child_environment, terminate

    stopped = await asyncio.create_subprocess_exec("sleep", "60")
    stopped.send_signal(signal.SIGSTOP)
    assert await terminate(stopped, 5) == -signal.SIGTERM
    stubborn = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
        "signal.SIG_IGN); print('ready', flush=True); time.sleep(60)",
        stdout=asyncio.subprocess.PIPE)
    assert stubborn.stdout is not None
    await stubborn.stdout.readline()
    assert await terminate(stubborn, 0.5) == -signal.SIGKILL
    assert child_environment({"NOTIFY_SOCKET": "/run/x", "LISTEN_FDS": "1",
                              "PATH": "/bin"}) == {"PATH": "/bin"}
