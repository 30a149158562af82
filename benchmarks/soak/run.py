"""`python -m benchmarks.soak [--minutes M | --seconds S] [--concurrency N] [--out DIR]`

Boots the stack (benchmarks/soak/stack.py) in a sandboxed systemd, enters its network
namespace, and runs for the given time: N workers send a random mix of requests (the
openai SDK, the anthropic SDK, raw aiohttp; streamed and not; profiles private T1,
personal T2, burst T3) while faults are injected at random (benchmarks/soak/faults.py).
Then it checks the invariants, prints the table and writes it as markdown and JSON
(soak-<UTC time>.md/.json in --out, default benchmarks/results/). Exit status 0 only when
every invariant holds. Needs root (the sandbox) and the llama-server build
(scripts/build-llama-server.sh).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import random
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.soak import report
from benchmarks.soak.clients import KINDS, Clients, Outcome
from benchmarks.soak.faults import Injector
from benchmarks.soak.stack import (
    CLOUD_MODEL,
    CLOUD_PORT,
    FLOOR_PORT,
    PROFILES,
    RELAY_PORT,
    boot,
    budgets,
    request_bound_s,
    rss_kib,
    wait_ready,
)
from benchmarks.soak.standins import CountingCloud, DropProxy
from devtools.sandbox import Sandbox
from scripts.demo import DEMO_CLOUD, DEMO_CLOUD_KEY

REPO = Path(__file__).resolve().parents[2]
CLONE_NEWNET = 0x40000000
WATCHED = ("mushishi-router.service", "mushishi-egress.service")
FLOOR_UNIT = "mushishi-cpu-floor.service"
# Shares of the load: profile (T1 / T2 / T3), and client kind (uniform over KINDS).
SETTLE_S = 30.0
PROFILE_WEIGHTS = {"private": 5, "personal": 3, "burst": 2}


def enter_network_namespace(pid: int) -> None:
    """Move this process (its main thread, and every thread it starts later) into the
    network namespace of `pid`: the clients and stand-ins then see the sandbox's lo."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns into the sandbox's network namespace: "
                                 f"{os.strerror(error)}")
    finally:
        os.close(fd)


def llama_server_build() -> Path:
    script = REPO / "scripts" / "build-llama-server.sh"
    result = subprocess.run([str(script)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{script} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def tiny_model_file() -> Path:
    import hashlib

    from tests.assets import tiny_model

    source = Path(tiny_model.__file__).read_bytes()
    folder = Path("/var/cache/mushishi/test-assets")
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    return tiny_model.write_tiny_model(
        folder / f"tiny-{hashlib.sha256(source).hexdigest()[:12]}.gguf")


async def drive(box: Sandbox, args: argparse.Namespace) -> dict[str, Any]:
    """The soak itself, inside the sandbox's network namespace."""
    rng = random.Random(args.seed)
    cloud = CountingCloud(CLOUD_MODEL, DEMO_CLOUD_KEY, name="kimi", host=DEMO_CLOUD,
                          port=CLOUD_PORT, token_delay=0.01)
    await cloud.start()
    proxy = await DropProxy(RELAY_PORT, FLOOR_PORT).start()
    await asyncio.to_thread(wait_ready, box)
    bound = request_bound_s()
    clients = Clients(timeout_s=bound + 30)
    origin = time.monotonic()
    outcomes: list[Outcome] = []
    sequence = 0
    deadline = origin + args.seconds
    warmup = min(20.0, args.seconds * 0.15)
    rss: dict[str, Any] = {}
    profiles = list(PROFILE_WEIGHTS)
    weights = [PROFILE_WEIGHTS[p] for p in profiles]

    async def worker() -> None:
        nonlocal sequence
        while time.monotonic() < deadline:
            sequence += 1
            outcomes.append(await clients.one(rng.choice(KINDS),
                                              rng.choices(profiles, weights)[0],
                                              sequence, origin))

    async def measure(when: str, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        rss[when] = {unit: await asyncio.to_thread(rss_kib, box, unit) for unit in WATCHED}

    async def progress() -> None:  # a line a minute: a 40-minute run is not silent
        while time.monotonic() + 60 < deadline:
            await asyncio.sleep(60)
            print(report.progress(outcomes, injector.log, time.monotonic() - origin,
                                  args.seconds, bound), flush=True)

    stop_faults = asyncio.Event()
    injector = Injector(box, proxy, cloud, rng, origin,
                        watchdog_stops=args.watchdog_stops or args.seconds >= 600)
    # Faults start after the warm-up (the first RSS reading) and stop 15 % before the end,
    # so that the last requests show the stack has healed.
    quiet = max(10.0, args.seconds * 0.15)

    async def faults() -> None:
        await asyncio.sleep(warmup + 2)
        stopper = asyncio.get_running_loop().call_at(
            asyncio.get_running_loop().time() + max(0.0, args.seconds - warmup - 2 - quiet),
            stop_faults.set)
        try:
            await injector.run(stop_faults, (args.fault_min_s, args.fault_max_s))
        finally:
            stopper.cancel()

    try:
        await asyncio.gather(*(worker() for _ in range(args.concurrency)),
                             measure("start", origin + warmup),
                             measure("end", deadline - 1.0), faults(), progress())
    finally:
        await clients.close()
    elapsed = time.monotonic() - origin
    # Every client request has ended: the egress settles what it relayed. Reservations
    # still open after SETTLE_S are requests the egress lost track of (reported, and the
    # budget check then fails on them).
    settle = time.monotonic()
    while True:
        ledger = await asyncio.to_thread(budgets, box)
        if not ledger.get("kimi", {}).get("requests_in_flight") or \
                time.monotonic() - settle > SETTLE_S:
            break
        await asyncio.sleep(1)
    settle_s = time.monotonic() - settle
    restarts = {unit: int(box.systemctl("show", "-P", "NRestarts", unit, check=False)
                          .stdout.strip() or 0) for unit in (*WATCHED, FLOOR_UNIT)}
    await proxy.stop()
    await cloud.stop()
    return report.build(
        outcomes=outcomes, faults=injector.log, rss=rss, ledger=ledger.get("kimi", {}),
        provider={"answered": cloud.answered, "tokens": cloud.answered_tokens,
                  "refused": cloud.refused, "t1_seen": cloud.sovereign[:20]},
        dropped=proxy.dropped, relay_refused=dict(proxy.refused), restarts=restarts,
        bound_s=bound, elapsed_s=elapsed, settle_s=settle_s,
        settings={"seconds": args.seconds, "concurrency": args.concurrency, "seed": args.seed,
                  "fault_interval_s": [args.fault_min_s, args.fault_max_s],
                  "profiles": {p: PROFILES[p] for p in profiles}, "clients": list(KINDS)})


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, help="how long to drive load (default 3)")
    length.add_argument("--seconds", type=float)
    parser.add_argument("--concurrency", type=int, default=12, help="workers (default 12)")
    parser.add_argument("--watchdog-stops", action="store_true",
                        help="let every other SIGSTOP outlast the floor's WatchdogSec= "
                        "(the default in runs of 10 minutes or more)")
    parser.add_argument("--fault-min-s", type=float, default=3.0)
    parser.add_argument("--fault-max-s", type=float, default=9.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--llama-server", type=Path, default=None)
    parser.add_argument("--tiny-model", type=Path, default=None)
    args = parser.parse_args(argv)
    args.seconds = args.seconds if args.seconds is not None else (args.minutes or 3.0) * 60
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 32)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    llama_server = args.llama_server or llama_server_build()
    model = args.tiny_model or tiny_model_file()
    print(f"soak: booting the stack (seed {args.seed})", flush=True)
    box = boot(llama_server, model)
    try:
        enter_network_namespace(box.pid or 0)
        result = asyncio.run(drive(box, args))
        result["journal_tail"] = box.journal(
            "-u", "mushishi-router.service", "-u", "mushishi-egress.service",
            "-u", FLOOR_UNIT, "-p", "warning", "-n", "60").splitlines()
        # The router's one line per failed request names every hop's reason.
        result["journal_failed_requests"] = [
            line for line in box.journal("-u", "mushishi-router.service", "-g", "-> none",
                                         "-n", "400").splitlines()][-60:]
        result["journal_egress_ledger"] = box.journal(
            "-u", "mushishi-egress.service", "-g", "ledger", "-n", "40").splitlines()
        result["journal_cpu_floor"] = box.journal("-u", FLOOR_UNIT, "-n", "80").splitlines()
    finally:
        box.stop()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    markdown = report.markdown(result)
    (args.out / f"soak-{stamp}.md").write_text(markdown)
    (args.out / f"soak-{stamp}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(markdown)
    print(f"written: {args.out}/soak-{stamp}.md and .json")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
