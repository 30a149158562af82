"""What supervising llama-server costs: time to ready, and chat throughput under checks.

Peers in the same run, on the same tiny model and llama-server build:

* time to ready: a bare llama-server polled on /health every 10 ms (the fastest a naive
  `Type=simple` + curl loop could know) against the supervisor reaching READY=1 (which
  adds `--help`, the pre-start checks, /v1/models and a smoke completion);
* throughput: sequential chat completions (64 tokens each) against a bare llama-server,
  against one supervised with the shipped intervals (health 5 s, smoke 30 s), and against
  one supervised with the test suite's aggressive intervals (0.2 s / 0.5 s).

Usage: `python -m benchmarks.cpu_floor_overhead [--rounds N] [--seconds S] [--out FILE]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from mushishi.services.cpu_floor.metrics import FloorMetrics
from mushishi.services.cpu_floor.state import HistoryStore
from mushishi.services.cpu_floor.supervisor import Supervisor
from mushishi.shared.config.cpu_floor import CpuFloorSettings
from mushishi.shared.notify import Notifier
from scripts.demo import llama_server
from tests.assets.tiny_model import write_tiny_model
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[1]
CHAT = {"messages": [{"role": "user", "content": "benchmark"}], "max_tokens": 64,
        "ignore_eos": True}


def settings(binary: str, model: Path, **overrides: object) -> CpuFloorSettings:
    return CpuFloorSettings(**{
        "llama_server": binary, "model": str(model), "alias": "tiny", "port": free_port(),
        "ctx_size": 512, "threads": 1, "mlock": False,
        "extra_args": ["--log-disable"],  # the same for every peer: no log writing cost
        **overrides})


@contextlib.asynccontextmanager
async def bare(config: CpuFloorSettings) -> AsyncIterator[float]:
    """A bare llama-server; yields seconds until /health answered 200."""
    from mushishi.services.cpu_floor.core import llama_server_argv
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        *llama_server_argv(config), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with aiohttp.ClientSession() as session:
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"http://127.0.0.1:{config.port}/health") as r:
                        if r.status == 200:
                            break
                await asyncio.sleep(0.01)
        yield time.monotonic() - started
    finally:
        process.send_signal(signal.SIGTERM)
        await process.wait()


@contextlib.asynccontextmanager
async def supervised(config: CpuFloorSettings) -> AsyncIterator[float]:
    """A supervised llama-server; yields seconds until READY=1."""
    with tempfile.TemporaryDirectory(dir="/var/tmp") as directory:
        path = f"{directory}/notify.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.setblocking(False)
        ready = asyncio.Event()

        def receive() -> None:
            with contextlib.suppress(BlockingIOError):
                while True:
                    if sock.recv(4096).startswith(b"READY=1"):
                        ready.set()

        loop = asyncio.get_running_loop()
        loop.add_reader(sock.fileno(), receive)
        os.environ["NOTIFY_SOCKET"] = path
        notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000",
                             "WATCHDOG_PID": str(os.getpid())})
        supervisor = Supervisor(config, notifier, FloorMetrics(), HistoryStore(None),
                                environ={"PATH": os.environ.get("PATH", "")})
        started = time.monotonic()
        task = asyncio.create_task(supervisor.run())
        try:
            await asyncio.wait_for(ready.wait(), 60)
            yield time.monotonic() - started
        finally:
            supervisor.stop()
            await task
            loop.remove_reader(sock.fileno())
            sock.close()
            del os.environ["NOTIFY_SOCKET"]


async def throughput(port: int, seconds: float) -> float:
    """Completion tokens per second over sequential 64-token chat completions."""
    tokens = 0
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            async with session.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                                    json=CHAT) as response:
                tokens += (await response.json())["usage"]["completion_tokens"]
        return tokens / (time.monotonic() - started)


async def run(rounds: int, seconds: float) -> dict[str, list[float]]:
    binary = llama_server()
    results: dict[str, list[float]] = {k: [] for k in (
        "ready_bare_s", "ready_supervised_s", "tps_bare", "tps_shipped", "tps_aggressive")}
    with tempfile.TemporaryDirectory(dir="/var/tmp") as directory:
        model = write_tiny_model(Path(directory) / "tiny.gguf")
        for _ in range(rounds):
            # Interleave the peers so load from other work hits them alike.
            config = settings(binary, model)
            async with bare(config) as ready:
                results["ready_bare_s"].append(ready)
                results["tps_bare"].append(await throughput(config.port, seconds))
            config = settings(binary, model)
            async with supervised(config) as ready:
                results["ready_supervised_s"].append(ready)
                results["tps_shipped"].append(await throughput(config.port, seconds))
            config = settings(binary, model, check_interval_s=0.2, smoke_interval_s=0.5,
                              check_timeout_s=0.5, smoke_timeout_s=1.0)
            async with supervised(config):
                results["tps_aggressive"].append(await throughput(config.port, seconds))
    return results


def report(results: dict[str, list[float]], rounds: int, seconds: float) -> str:
    median = {k: statistics.median(v) for k, v in results.items()}
    load = os.getloadavg()
    lines = [
        "# CPU floor overhead (benchmarks/cpu_floor_overhead.py)",
        "",
        f"Taken {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} "
        f"({os.cpu_count()} CPUs; load average at the end, this run included: "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}): the peers share the cores, so "
        "trust the ratios more than the absolute numbers.",
        f"{rounds} interleaved rounds, {seconds:g} s of sequential 64-token chat completions "
        "per peer per round; medians.",
        "",
        "| measure | bare llama-server | supervised | ratio |",
        "|---|---|---|---|",
        f"| time to ready (s) | {median['ready_bare_s']:.3f} (/health 200) | "
        f"{median['ready_supervised_s']:.3f} (READY=1) | "
        f"{median['ready_supervised_s'] / median['ready_bare_s']:.2f}× |",
        f"| tokens/s, shipped intervals (5 s / 30 s) | {median['tps_bare']:.0f} | "
        f"{median['tps_shipped']:.0f} | {median['tps_shipped'] / median['tps_bare']:.3f} |",
        f"| tokens/s, test intervals (0.2 s / 0.5 s) | {median['tps_bare']:.0f} | "
        f"{median['tps_aggressive']:.0f} | "
        f"{median['tps_aggressive'] / median['tps_bare']:.3f} |",
        "",
        "Raw: " + ", ".join(f"{k} {[round(x, 3) for x in v]}" for k, v in results.items()),
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu_floor_overhead")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path,
                        default=REPO / "benchmarks" / "results" / "cpu_floor_overhead.md")
    args = parser.parse_args()
    results = asyncio.run(run(args.rounds, args.seconds))
    text = report(results, args.rounds, args.seconds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
