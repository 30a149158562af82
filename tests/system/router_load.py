"""A bounded load generator for the router (run inside the sandbox's network namespace).

`python -m tests.system.router_load URL KEY COUNT CONCURRENCY OUT.json [PROFILE]` sends COUNT
chat requests for PROFILE (default private), CONCURRENCY at a time, each on a new connection
(a closed keep-alive connection is the one race no server can hide), and writes every status
and error to OUT.json.

From a test on the host: `start()` runs it against the sandbox's router, `stream()` holds
one streamed chat completion open meanwhile, `reap()` ends whatever still runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from devtools.sandbox import Sandbox

ROUTER_URL = "http://127.0.0.1:4000/v1/chat/completions"


async def main(url: str, key: str, count: int, concurrency: int, out: str,
               profile: str = "private") -> None:
    import aiohttp

    results: list[dict[str, object]] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(count):
        queue.put_nowait(index)
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def worker() -> None:
            while not queue.empty():
                index = queue.get_nowait()
                started = time.monotonic()
                began = time.time()  # wall clock, to line failures up with the journal
                try:
                    async with session.post(url, headers={"Authorization": f"Bearer {key}"},
                                            json={"model": profile, "messages": [
                                                {"role": "user", "content": f"load {index}"}]}
                                            ) as response:
                        await response.read()
                        results.append({"status": response.status, "started": began,
                                        "seconds": time.monotonic() - started})
                except (aiohttp.ClientError, OSError, TimeoutError) as error:
                    results.append({"error": f"{error.__class__.__name__}: {error}",
                                    "started": began, "seconds": time.monotonic() - started})
                await asyncio.sleep(0.01)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    with open(out, "w") as handle:
        json.dump(results, handle)


def start(box: Sandbox, key: str, count: int, concurrency: int, out: Path,
          profile: str | None = None) -> subprocess.Popen[bytes]:
    """This load generator against the sandbox's router, in its network namespace."""
    repo = Path(__file__).resolve().parents[2]
    return subprocess.Popen(box.net_command([
        sys.executable, "-m", "tests.system.router_load", ROUTER_URL, key, str(count),
        str(concurrency), str(out), *([profile] if profile else [])]),
        cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})


def stream(box: Sandbox, key: str, profile: str, content: str,
           max_time_s: int) -> subprocess.Popen[bytes]:
    """curl holding one streamed chat completion to the sandbox's router (stdout piped)."""
    return subprocess.Popen(box.net_command([
        "curl", "-sN", "--max-time", str(max_time_s), "-H", f"Authorization: Bearer {key}",
        "-H", "Content-Type: application/json", "-d",
        json.dumps({"model": profile, "stream": True,
                    "messages": [{"role": "user", "content": content}]}),
        ROUTER_URL]), stdout=subprocess.PIPE)


def reap(*processes: subprocess.Popen[bytes]) -> None:
    """Kill and wait for whichever of `processes` still run."""
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


if __name__ == "__main__":
    url, key, count, concurrency, out = sys.argv[1:6]
    asyncio.run(main(url, key, int(count), int(concurrency), out, *sys.argv[6:7]))
