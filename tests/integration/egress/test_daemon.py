"""mushishi-egress as a process: SIGHUP applies new budgets and rotated keys, an invalid
config exits 78 naming the key, and a second egress on the same ledger refuses to start."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

from mushishi.shared.config import load_config
from tests.integration.egress.harness import (
    CHAT,
    HEADERS_T2,
    EgressProcess,
    config_text,
    write_credentials,
)
from tests.paths import BINDIR
from tests.standins.cloud import CloudStandin


async def ask(egress: EgressProcess, backend: str = "kimi") -> tuple[int, dict]:
    async with egress.session() as session, session.post(
            "http://egress/v1/chat/completions", json=CHAT,
            headers={**HEADERS_T2, "X-Mushishi-Backend": backend}) as response:
        return response.status, await response.json()


async def test_sighup_applies_a_new_budget_and_a_rotated_key(
    tmp_path: Path, providers: tuple[CloudStandin, CloudStandin],
) -> None:
    kimi, groq = providers
    config = tmp_path / "mushishi.toml"
    config.write_text(config_text(tmp_path, kimi_port=kimi.port, groq_port=groq.port))
    credentials = write_credentials(tmp_path / "credentials")
    egress = EgressProcess(config, {"kimi.test": kimi.host, "groq.test": groq.host},
                           credentials, tmp_path / "egress.log")
    try:
        await egress.start()
        assert (await ask(egress))[0] == 200
        kimi.key = "nvapi-rotated"  # the provider now wants the new key
        assert (await ask(egress))[0] == 401
        (credentials / "ngc-api-key").write_text("nvapi-rotated\n")
        config.write_text(config_text(tmp_path, kimi_port=kimi.port, groq_port=groq.port,
                                      kimi_extra="budget = { requests_per_day = 2 }"))
        assert egress.process is not None
        egress.process.send_signal(signal.SIGHUP)
        for _ in range(100):
            if "reloaded profiles, budgets" in egress.log.read_text():
                break
            await asyncio.sleep(0.05)
        status, answer = await ask(egress)
        assert status == 200, answer  # the rotated key, read again
        status, answer = await ask(egress)
        assert (status, answer["error"]["code"]) == (429, "budget_exhausted")  # 2 of 2
        assert kimi.chat_requests()[-1].headers["Authorization"] == "Bearer nvapi-rotated"
    finally:
        egress.stop()


def test_an_unknown_allowed_peer_exits_78_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "mushishi.toml"
    text = config_text(tmp_path, kimi_port=1, groq_port=2)
    # The default, user mushishi: `mushishi install` creates it; this machine has none.
    config.write_text("\n".join(line for line in text.splitlines()
                                if not line.startswith("allowed_peers")))
    assert load_config(config).settings.egress.allowed_peers == ["mushishi"]
    result = subprocess.run([f"{BINDIR}/mushishi-egress", "--config", str(config)],
                            capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin"}, check=False)
    assert result.returncode == 78, result.stderr
    assert "egress.allowed_peers[0]: no such user 'mushishi'" in result.stderr
    assert "mushishi install" in result.stderr


def test_a_second_egress_on_the_same_ledger_refuses_to_start(tmp_path: Path) -> None:
    first = tmp_path / "first.toml"
    first.write_text(config_text(tmp_path, kimi_port=1, groq_port=2))
    second = tmp_path / "second.toml"
    second.write_text(first.read_text().replace(f'"{tmp_path}/egress.sock"',
                                                f'"{tmp_path}/egress2.sock"'))
    env = {"PATH": "/usr/bin:/bin", "MUSHISHI_CREDENTIAL_NGC_API_KEY": "k",
           "MUSHISHI_CREDENTIAL_GROQ_API_KEY": "k"}
    running = subprocess.Popen([f"{BINDIR}/mushishi-egress", "--config", str(first)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        socket_path = tmp_path / "egress.sock"
        for _ in range(600):
            if socket_path.exists():
                break
            assert running.poll() is None
            subprocess.run(["sleep", "0.05"], check=True)
        result = subprocess.run([f"{BINDIR}/mushishi-egress", "--config", str(second)],
                                capture_output=True, text=True, timeout=60, env=env,
                                check=False)
        assert result.returncode == 1, result.stderr
        assert "another mushishi-egress is using" in result.stderr
        assert "ledger.lock" in result.stderr
    finally:
        running.send_signal(signal.SIGTERM)
        output, _ = running.communicate(timeout=30)
    assert running.returncode == 0, output.decode()
