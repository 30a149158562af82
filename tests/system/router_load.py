"""A bounded load generator for the router (run inside the sandbox's network namespace).

`python -m tests.system.router_load URL KEY COUNT CONCURRENCY OUT.json [PROFILE] [--keep-alive]`
sends COUNT non-streamed chat requests for PROFILE (default private; `a,b` alternates between
profiles a and b), CONCURRENCY at a time,
and writes every status and error to OUT.json. By default each request opens a new
connection; with `--keep-alive` the client is what most are: a pool of at most CONCURRENCY
keep-alive connections, reused from one request to the next, and no retries (aiohttp never
retries a POST), so a server that closes a connection under a request shows as an error.

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
               profile: str = "private", keep_alive: bool = False) -> None:
    import aiohttp

    results: list[dict[str, object]] = []
    profiles = profile.split(",")
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(count):
        queue.put_nowait(index)
    connector = aiohttp.TCPConnector(limit=concurrency) if keep_alive \
        else aiohttp.TCPConnector(force_close=True, limit=0)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def worker() -> None:
            while not queue.empty():
                index = queue.get_nowait()
                started = time.monotonic()
                began = time.time()  # wall clock, to line failures up with the journal
                body = {"model": profiles[index % len(profiles)],
                        "messages": [{"role": "user", "content": f"load {index}"}]}
                try:
                    async with session.post(url, headers={"Authorization": f"Bearer {key}"},
                                            json=body) as response:
                        await response.read()
                        results.append({"status": response.status, "started": began,
                                        "seconds": time.monotonic() - started})
                except (aiohttp.ClientError, OSError, TimeoutError) as error:
                    results.append({"error": f"{error.__class__.__name__}: {error}",
                                    "started": began, "seconds": time.monotonic() - started})
                if not keep_alive:
                    await asyncio.sleep(0.01)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    with open(out, "w") as handle:
        json.dump(results, handle)


def start(box: Sandbox, key: str, count: int, concurrency: int, out: Path,
          profile: str | None = None, *, keep_alive: bool = False) -> subprocess.Popen[bytes]:
    """This load generator against the sandbox's router, in its network namespace."""
    repo = Path(__file__).resolve().parents[2]
    return subprocess.Popen(box.net_command([
        sys.executable, "-m", "tests.system.router_load", ROUTER_URL, key, str(count),
        str(concurrency), str(out), profile or "private",
        *(["--keep-alive"] if keep_alive else [])]),
        cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})


def restart_under_load(box: Sandbox, key: str, unit: str, profile: str, count: int,
                       concurrency: int, restarts: int, out: Path
                       ) -> tuple[list[dict[str, object]], float]:
    """COUNT keep-alive requests for PROFILE, CONCURRENCY at a time, while `systemctl restart
    UNIT` runs RESTARTS times: every result, and when (wall clock) the last restart ended."""
    load = start(box, key, count, concurrency, out, profile, keep_alive=True)
    try:
        # Restart while the client's keep-alive connections are busy on the old process; after
        # each restart, a pause lets the load settle on the new one before the next.
        time.sleep(1.0)
        for _ in range(restarts):
            box.systemctl("restart", unit, timeout=90)
            time.sleep(1.0)
        restarted = time.time()
        if load.wait(timeout=600) != 0:
            raise AssertionError(f"the load generator exited {load.returncode}")
    finally:
        reap(load)
    return json.loads(out.read_text()), restarted


def summary(what: str, results: list[dict[str, object]], concurrency: int,
            restarts: int) -> str:
    """One line: requests, restarts, seconds, failures by kind and the distinct errors."""
    starts = [float(r["started"]) for r in results]  # type: ignore[arg-type]
    ends = [float(r["started"]) + float(r["seconds"]) for r in results]  # type: ignore[arg-type]
    errors = sorted({str(r["error"]) for r in results if "error" in r})
    return (f"{what}: {len(results)} requests, {concurrency} at a time, {restarts} restarts, "
            f"{max(ends) - min(starts):.1f} s, failed: {failures(results) or 0}"
            + (f" ({'; '.join(errors[:4])})" if errors else ""))


def failures(results: list[dict[str, object]]) -> dict[str, int]:
    """How many requests failed, by error class or HTTP status ({} when none did)."""
    counts: dict[str, int] = {}
    for result in results:
        if result.get("status") == 200:
            continue
        error = result.get("error")
        what = str(error).split(":", 1)[0] if error else f"HTTP {result.get('status')}"
        counts[what] = counts.get(what, 0) + 1
    return counts


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
    flags = [arg for arg in sys.argv[1:] if arg.startswith("--")]
    url, key, count, concurrency, out, *rest = [a for a in sys.argv[1:] if a not in flags]
    asyncio.run(main(url, key, int(count), int(concurrency), out, *rest[:1],
                     keep_alive="--keep-alive" in flags))
