"""A bounded load generator for the router (run inside the sandbox's network namespace).

`python -m tests.system.router_load URL KEY COUNT CONCURRENCY OUT.json [PROFILE]` sends COUNT
chat requests for PROFILE (default private), CONCURRENCY at a time, each on a new connection
(a closed keep-alive connection is the one race no server can hide), and writes every status
and error to OUT.json.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time


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


if __name__ == "__main__":
    url, key, count, concurrency, out = sys.argv[1:6]
    asyncio.run(main(url, key, int(count), int(concurrency), out, *sys.argv[6:7]))
