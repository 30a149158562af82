"""The real mushishi-router process: socket activation (LISTEN_FDS), sd_notify READY/STATUS/
STOPPING, graceful drain of a stream on SIGTERM, standalone listening, refusal of a bad config."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.integration.router.harness import PERSONAL_KEY, config_text
from tests.paths import BINDIR
from tests.ports import free_port
from tests.standins.egress import EgressStandin
from tests.standins.llamacpp import LlamaCppStandin
from tests.standins.openai_server import Fault
from tests.standins.vllm import VllmStandin

# Stands in for systemd's exec of a socket-activated unit: fd N becomes fd 3, LISTEN_PID is
# the pid that execs the daemon.
SHIM = ("import os, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); os.close(fd); "
        "os.environ['LISTEN_PID'] = str(os.getpid()); os.execv(sys.argv[2], sys.argv[2:])")


class Notifications:
    """A NOTIFY_SOCKET that collects what the daemon sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    async def wait(self, needle: str, within: float = 30) -> str:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                self.messages.append(self.sock.recv(65536).decode())
            except BlockingIOError:
                found = [m for m in self.messages if needle in m]
                if found:
                    return found[0]
                await asyncio.sleep(0.02)
        raise AssertionError(f"no {needle!r} from the daemon; got {self.messages}")


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[tuple[VllmStandin, LlamaCppStandin, Path]]:
    gpu = await VllmStandin("gpu-model", name="gpu", token_delay=0.1).start()
    cpu = await LlamaCppStandin("cpu-alias", name="cpu").start()
    egress = await EgressStandin(str(tmp_path / "egress.sock")).start()
    config = tmp_path / "mushishi.toml"
    config.write_text(config_text(gpu_url=gpu.url, cpu_url=cpu.url,
                                  egress_socket=str(tmp_path / "egress.sock")))
    yield gpu, cpu, config
    for server in (gpu, cpu, egress):
        await server.stop()


def environment(notify: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUSHISHI_")}
    env.update({"NOTIFY_SOCKET": str(notify), "PYTHONUNBUFFERED": "1"})
    return env


def start_router(config: Path, text: str, tmp_path: Path
                 ) -> tuple[subprocess.Popen[bytes], Notifications, int, str]:
    """The daemon standalone on `text` (written to `config`, listening on a free port):
    (the process, its notifications, the port, the text as written)."""
    port = free_port()
    text = text.replace('listen = ["127.0.0.1:4000"]', f'listen = ["127.0.0.1:{port}"]')
    config.write_text(text)
    notify = Notifications(tmp_path / "notify")
    daemon = subprocess.Popen([f"{BINDIR}/mushishi-router", "--config", str(config)],
                              env=environment(notify.path), stderr=subprocess.PIPE)
    return daemon, notify, port, text


def stop_router(daemon: subprocess.Popen[bytes]) -> str:
    """SIGTERM, a clean exit, and what the daemon logged."""
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=15) == 0
    assert daemon.stderr is not None
    log = daemon.stderr.read().decode()
    daemon.stderr.close()
    return log


async def test_socket_activated_daemon_notifies_serves_and_drains_a_stream_on_sigterm(
    tmp_path: Path, servers: tuple[VllmStandin, LlamaCppStandin, Path],
) -> None:
    _, _, config = servers
    notify = Notifications(tmp_path / "notify")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    daemon = subprocess.Popen(
        [sys.executable, "-c", SHIM, str(listener.fileno()), f"{BINDIR}/mushishi-router",
         "--config", str(config)],
        pass_fds=[listener.fileno()], env={**environment(notify.path), "LISTEN_FDS": "1",
                                           "LISTEN_FDNAMES": "mushishi-router.socket"},
        stderr=subprocess.PIPE)
    listener.close()  # like systemd, we keep no copy the daemon could race with
    try:
        ready = await notify.wait("READY=1")
        assert "STATUS=serving 5 profiles; sovereignty: config ✓, connect-time ✓" in ready
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        body = {"model": "private", "stream": True,
                "messages": [{"role": "user", "content": "long answer"}]}
        async with aiohttp.ClientSession() as session, session.post(
            url, headers={"Authorization": f"Bearer {PERSONAL_KEY}"}, json=body,
        ) as stream:
            assert stream.status == 200
            first = await stream.content.readline()
            assert first.startswith(b"data: ")
            daemon.send_signal(signal.SIGTERM)
            stopping = await notify.wait("STOPPING=1")
            assert "draining 1 request(s)" in stopping
            rest = await stream.content.read()
        assert rest.rstrip().endswith(b"data: [DONE]")  # the stream in flight finished
        assert daemon.wait(timeout=15) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        assert daemon.stderr is not None
        log = daemon.stderr.read().decode()
        daemon.stderr.close()
    assert "serving on 127.0.0.1:" in log and "stopped" in log, log
    assert "long answer" not in log


async def test_standalone_daemon_listens_on_router_listen(
    tmp_path: Path, servers: tuple[VllmStandin, LlamaCppStandin, Path],
) -> None:
    _, _, config = servers
    port = free_port()
    unix = tmp_path / "router.sock"
    config.write_text(config.read_text().replace(
        'listen = ["127.0.0.1:4000"]', f'listen = ["127.0.0.1:{port}", "unix:{unix}"]'))
    notify = Notifications(tmp_path / "notify")
    daemon = subprocess.Popen([f"{BINDIR}/mushishi-router", "--config", str(config)],
                              env=environment(notify.path), stderr=subprocess.DEVNULL)
    try:
        await notify.wait("READY=1")
        assert oct(unix.stat().st_mode & 0o777) == "0o660"
        async with aiohttp.ClientSession() as session, \
                session.get(f"http://127.0.0.1:{port}/health") as response:
            assert response.status == 200
        connector = aiohttp.UnixConnector(path=str(unix))
        async with aiohttp.ClientSession(connector=connector) as session, \
                session.get("http://router/ready") as response:
            assert (await response.json())["ready"] is True
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=15) == 0


def test_invalid_config_is_refused_with_exit_78_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "mushishi.toml"
    config.write_text(config_text(gpu_url="http://10.1.2.3:8000/v1", cpu_url="http://127.0.0.1:1/v1",
                                  egress_socket=str(tmp_path / "e.sock")))
    result = subprocess.run([f"{BINDIR}/mushishi-router", "--config", str(config)],
                            capture_output=True, text=True, timeout=60,
                            env={k: v for k, v in os.environ.items()
                                 if not k.startswith("MUSHISHI_")})
    assert result.returncode == 78
    assert "profiles.private.chain[0]: T1 profile 'private' may only use local backends, " \
           "but backend 'gpu' is not local: 10.1.2.3 is outside router.local_networks" \
           in result.stderr


async def test_sighup_reloads_keys_and_keeps_the_running_config_when_invalid(
    tmp_path: Path, servers: tuple[VllmStandin, LlamaCppStandin, Path],
) -> None:
    _, _, config = servers
    daemon, notify, port, original = start_router(config, config.read_text(), tmp_path)
    url = f"http://127.0.0.1:{port}/v1/models"

    async def models_with(key: str) -> int:
        async with aiohttp.ClientSession() as session, session.get(
                url, headers={"Authorization": f"Bearer {key}"}) as response:
            return response.status

    try:
        await notify.wait("READY=1")
        assert await models_with("sk-added-by-reload") == 401
        added = hashlib.sha256(b"sk-added-by-reload").hexdigest()
        config.write_text(original.replace("[keys]\n", f'[keys]\n"{added}" = ["private"]\n'))
        daemon.send_signal(signal.SIGHUP)
        await notify.wait("RELOADING=1")
        deadline = time.monotonic() + 10
        while await models_with("sk-added-by-reload") != 200:
            assert time.monotonic() < deadline, "the reloaded key never worked"
            await asyncio.sleep(0.05)
        notify.messages.clear()
        config.write_text(original.replace("[router]", "[router]\nbogus = 1"))
        daemon.send_signal(signal.SIGHUP)
        await notify.wait("RELOADING=1")
        await notify.wait("READY=1")
        assert await models_with("sk-added-by-reload") == 200  # still the last good config
    finally:
        log = stop_router(daemon)
    assert "reload refused, keeping the running config" in log and "router.bogus" in log


async def test_cloud_share_survives_a_restart(
    tmp_path: Path, servers: tuple[VllmStandin, LlamaCppStandin, Path],
) -> None:
    gpu, cpu, config = servers
    port = free_port()
    config.write_text(config.read_text().replace('listen = ["127.0.0.1:4000"]',
                                                 f'listen = ["127.0.0.1:{port}"]'))
    base = f"http://127.0.0.1:{port}"
    gpu.fail_always(Fault.status_code(500))
    cpu.fail_always(Fault.status_code(500))

    async def run_once(action) -> dict:
        notify = Notifications(tmp_path / f"notify-{time.monotonic_ns()}")
        daemon = subprocess.Popen([f"{BINDIR}/mushishi-router", "--config", str(config)],
                                  env=environment(notify.path), stderr=subprocess.DEVNULL)
        try:
            await notify.wait("READY=1")
            async with aiohttp.ClientSession() as session:
                await action(session)
                async with session.get(base + "/status") as response:
                    return (await response.json())["cloud_share"]["personal"]
        finally:
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=15) == 0

    async def two_requests(session: aiohttp.ClientSession) -> None:
        for _ in range(2):
            async with session.post(base + "/v1/chat/completions",
                                    headers={"Authorization": f"Bearer {PERSONAL_KEY}"},
                                    json={"model": "personal", "messages": [
                                        {"role": "user", "content": "x"}]}) as response:
                assert response.headers["X-Mushishi-Backend"] == "kimi"

    async def nothing(session: aiohttp.ClientSession) -> None:
        return None

    before = await run_once(two_requests)
    after = await run_once(nothing)
    assert before["requests_day"] == after["requests_day"] == 2
    assert after["cloud_requests_day"] == 2 and after["day"] == 1.0


RESEARCH_KEY = "sk-research-only"
# A T2 profile whose local hop is down, so its requests reach the cloud (issue 13, hole 1).
RESEARCH_T2 = """
[backends.dead]
url = "http://127.0.0.1:{port}/v1"
model = "dead-model"

[profiles.research]
tier = "T2"
chain = ["dead", "kimi"]
"""


async def test_sighup_never_lets_a_new_key_reach_a_chain_the_new_config_forbids(
    tmp_path: Path, servers: tuple[VllmStandin, LlamaCppStandin, Path],
) -> None:
    # The operator makes `research` T1 (was T2, cloud allowed) and adds a key that may use
    # only `research`, then runs `systemctl reload mushishi-router`.
    gpu, cpu, _ = servers
    cloud = await EgressStandin(str(tmp_path / "canary-egress.sock")).start()
    config = tmp_path / "research.toml"
    daemon, notify, port, before = start_router(config, config_text(
        gpu_url=gpu.url, cpu_url=cpu.url, egress_socket=str(tmp_path / "canary-egress.sock"),
        extra=RESEARCH_T2.format(port=free_port())), tmp_path)
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {RESEARCH_KEY}"}
    try:
        await notify.wait("READY=1")
        after = before.replace('tier = "T2"\nchain = ["dead", "kimi"]',
                               'tier = "T1"\nchain = ["dead"]\nqueue_timeout_s = 1')
        digest = hashlib.sha256(RESEARCH_KEY.encode()).hexdigest()
        after = after.replace("[keys]\n", f'[keys]\n"{digest}" = ["research"]\n')
        assert after.count('"research"') == 1 and 'tier = "T1"\nchain = ["dead"]' in after
        config.write_text(after)
        daemon.send_signal(signal.SIGHUP)
        await notify.wait("RELOADING=1")
        await notify.wait("READY=1")
        async with aiohttp.ClientSession() as session, session.post(
                base + "/v1/chat/completions", headers=headers, json={
                    "model": "research",
                    "messages": [{"role": "user", "content": "private research notes"}]},
        ) as response:
            status, tier = response.status, response.headers.get("X-Mushishi-Tier")
            body = await response.json()
        assert cloud.requests == [], "a T1 prompt reached the cloud after a reload"
        # The new profile is in force for the new key: T1, local only.
        assert (status, tier) == (503, "T1"), body
        assert body["error"]["code"] == "sovereign_backends_unavailable"
    finally:
        stop_router(daemon)
        await cloud.stop()


async def test_sighup_that_changes_a_backend_is_refused_whole_and_named_in_status(
    tmp_path: Path, servers: tuple[VllmStandin, LlamaCppStandin, Path],
) -> None:
    _, _, config = servers
    daemon, notify, port, original = start_router(config, config.read_text(), tmp_path)
    base = f"http://127.0.0.1:{port}"
    added = hashlib.sha256(b"sk-added-with-a-backend-change").hexdigest()
    try:
        await notify.wait("READY=1")
        notify.messages.clear()
        changed = original.replace('model = "cpu-alias"', 'model = "another-alias"')
        config.write_text(changed.replace("[keys]\n", f'[keys]\n"{added}" = ["private"]\n'))
        daemon.send_signal(signal.SIGHUP)
        await notify.wait("RELOADING=1")
        ready = await notify.wait("READY=1")
        assert "restart needed (backends.cpu)" in ready
        async with aiohttp.ClientSession() as session:
            async with session.get(base + "/v1/models", headers={
                    "Authorization": "Bearer sk-added-with-a-backend-change"}) as response:
                assert response.status == 401  # nothing of the refused reload applies
            async with session.get(base + "/status") as response:
                status = await response.json()
        assert status["reload"]["pending_restart"] == ["backends.cpu"]
        assert "reload refused" in status["reload"]["detail"]
        assert status["backends"]["cpu"]["model"] == "cpu-alias"
    finally:
        log = stop_router(daemon)
    assert "reload refused, keeping the running config" in log and "backends.cpu" in log


async def test_sigterm_answers_requests_waiting_in_a_t1_queue_instead_of_cutting_them(
    tmp_path: Path, servers: tuple[VllmStandin, LlamaCppStandin, Path],
) -> None:
    # The chaos soak (issue 14) lost T1 requests parked in the queue (the CPU floor stopped)
    # when `systemctl restart` came: the drain waited drain_timeout_s on them, then cut their
    # connections (ServerDisconnectedError; a stream with waiting comments: a broken chunked
    # body). They are answered at once with their stable code, streams with an error event.
    gpu, cpu, config = servers
    await gpu.refuse()
    await cpu.refuse()
    text = config_text(gpu_url=gpu.url, cpu_url=cpu.url,
                       egress_socket=str(tmp_path / "egress.sock"),
                       private_extra="queue_timeout_s = 60")
    text = text.replace("[router]\n", "[router]\nwait_feedback_s = 0.2\n", 1)
    daemon, notify, port, _ = start_router(config, text, tmp_path)
    try:
        await notify.wait("READY=1")
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        headers = {"Authorization": f"Bearer {PERSONAL_KEY}"}
        plain = {"model": "private", "messages": [{"role": "user", "content": "hi"}]}
        async with aiohttp.ClientSession() as session:
            waiting = asyncio.create_task(session.post(url, headers=headers, json=plain))
            async with session.post(url, headers=headers, json={**plain, "stream": True}
                                    ) as stream:
                assert stream.status == 200
                assert (await stream.content.readline()).startswith(b": waiting for")
                await asyncio.sleep(0.5)  # both are in the T1 queue now
                began = time.monotonic()
                daemon.send_signal(signal.SIGTERM)
                rest = (await stream.content.read()).decode()
            answered = await waiting
            body = await answered.json()
            assert answered.status == 503, body
            assert body["error"]["code"] == "sovereign_backends_unavailable"
            assert "restarting or stopping" in body["error"]["message"]
            assert '"code": "sovereign_backends_unavailable"' in rest.replace('":"', '": "'), rest
        assert time.monotonic() - began < 5  # not drain_timeout_s (30 s)
    finally:
        log = stop_router(daemon) if daemon.poll() is None else ""
    assert "drain timeout" not in log, log
