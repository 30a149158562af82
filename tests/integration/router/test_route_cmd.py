"""`mushishi route` reads the running router's status over its unix socket."""

from __future__ import annotations

import asyncio
import json
import subprocess

from tests.integration.router.harness import Box
from tests.paths import BINDIR


async def route(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [f"{BINDIR}/mushishi", "route", *args], capture_output=True, text=True,
        timeout=60)


async def test_route_explains_which_backend_would_answer_and_why(box: Box) -> None:
    await box.gpu.refuse()
    await box.router.probe("gpu")
    result = await route("--profile", "private", "--socket", box.unix_socket)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "private (T1): cpu would answer"
    assert lines[1] == "  why: cpu (healthy); skipped gpu: connection refused"
    assert any(line.split()[:3] == ["gpu", "down", "local,"] for line in lines)
    assert "  sovereignty: config ✓, connect-time ✓, kernel ?, tenants ✓" in lines


async def test_route_exits_1_when_no_backend_would_answer_and_prints_json(box: Box) -> None:
    await box.cpu.refuse()
    await box.router.probe("cpu")
    result = await route("--profile", "strictcpu", "--socket", box.unix_socket, "--json")
    assert result.returncode == 1
    entry = json.loads(result.stdout)["strictcpu"]
    assert entry["would_use"] is None and entry["reason"].startswith("would answer backend_failed")


async def test_route_without_a_router_says_what_to_check(tmp_path) -> None:
    result = await route("--socket", str(tmp_path / "absent.sock"))
    assert result.returncode == 69
    assert "is mushishi-router.socket running?" in result.stderr
