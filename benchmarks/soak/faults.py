"""The faults the soak injects, at random, one of each kind at a time: each is what a person
or the machine does to a real box (systemctl, kill, a full disk, gpud switching modes), or
what a backend or a cloud provider does to the router (dropped connections, 429 and 5xx)."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.soak.stack import EGRESS_STATE, MUSHISHI, llama_server_pid
from benchmarks.soak.standins import CountingCloud, DropProxy, Fault
from devtools.sandbox import Sandbox

# kind -> weight
WEIGHTS = {
    "router_restart": 2,
    "egress_restart": 2,
    "floor_sigkill": 1,
    "floor_sigstop": 2,
    "mode_switch": 2,
    "backend_drop": 3,
    "cloud_errors": 3,
    "ledger_disk_full": 1,
}
FILLER = f"{EGRESS_STATE}/soak-disk-full"


@dataclass
class Injected:
    """One fault: when it began and ended (seconds since the soak began) and how it went."""

    kind: str
    began: float
    ended: float
    detail: str
    ok: bool = True

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Injector:
    """Injects faults into `box` until stopped; `watchdog_stops` lets a SIGSTOP last past the
    CPU floor's WatchdogSec= (30 s) so that systemd kills and restarts the floor."""

    def __init__(self, box: Sandbox, proxy: DropProxy, cloud: CountingCloud,
                 rng: random.Random, origin: float, watchdog_stops: bool) -> None:
        self.box = box
        self.proxy = proxy
        self.cloud = cloud
        self.rng = rng
        self.origin = origin
        self.watchdog_stops = watchdog_stops
        self.log: list[Injected] = []
        self.active: set[str] = set()
        self.mode = "off"
        self.stops = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def counts(self) -> Counter[str]:
        return Counter(entry.kind for entry in self.log)

    async def run(self, stop: asyncio.Event, interval: tuple[float, float]) -> None:
        """Start a random fault every `interval` seconds until `stop`, then wait for the
        faults still running to end (each undoes itself: SIGCONT, the disk freed)."""
        bag: list[str] = []
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.rng.uniform(*interval))
                break
            except TimeoutError:
                pass
            if not bag:  # every kind, as often as its weight, in a random order
                bag = [kind for kind, weight in WEIGHTS.items() for _ in range(weight)]
                self.rng.shuffle(bag)
            kind = bag.pop()
            if kind in self.active:
                bag.insert(0, kind)  # later
                continue
            self.active.add(kind)
            task = asyncio.create_task(self._one(kind))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self._tasks:
            await asyncio.gather(*self._tasks)

    async def _one(self, kind: str) -> None:
        began = time.monotonic() - self.origin
        try:
            detail = await getattr(self, kind)()
            ok = True
        except Exception as error:  # a fault that could not be injected is reported, not hidden
            detail, ok = f"{type(error).__name__}: {error}"[:300], False
        finally:
            self.active.discard(kind)
        self.log.append(Injected(kind, began, time.monotonic() - self.origin, detail, ok))

    async def _in_box(self, *argv: str, timeout: float = 120.0) -> str:
        result = await asyncio.to_thread(self.box.run, list(argv), check=False,
                                         timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"`{' '.join(argv)}` exited {result.returncode}: "
                               f"{(result.stdout + result.stderr).strip()[-200:]}")
        return (result.stdout + result.stderr).strip()[-200:]

    async def router_restart(self) -> str:
        await self._in_box("systemctl", "restart", "mushishi-router.service")
        return "systemctl restart mushishi-router.service"

    async def egress_restart(self) -> str:
        await self._in_box("systemctl", "restart", "mushishi-egress.service")
        return "systemctl restart mushishi-egress.service"

    async def _llama_pid(self) -> int:
        pid = await asyncio.to_thread(llama_server_pid, self.box)
        if not pid:
            raise RuntimeError("no llama-server running under mushishi-cpu-floor.service")
        return pid

    async def floor_sigkill(self) -> str:
        pid = await self._llama_pid()
        await self._in_box("kill", "-KILL", str(pid))
        return f"SIGKILL llama-server (pid {pid})"

    async def floor_sigstop(self) -> str:
        pid = await self._llama_pid()
        self.stops += 1
        long = self.watchdog_stops and self.stops % 2 == 0  # every other stop
        seconds = self.rng.uniform(35, 45) if long else self.rng.uniform(2, 8)
        await self._in_box("kill", "-STOP", str(pid))
        await asyncio.sleep(seconds)
        # After a long stop systemd may have killed it (WatchdogSec=): nothing to continue.
        await asyncio.to_thread(self.box.run, ["kill", "-CONT", str(pid)], check=False)
        return f"SIGSTOP llama-server (pid {pid}) for {seconds:.1f} s, then SIGCONT"

    async def mode_switch(self) -> str:
        target = "agent" if self.mode == "off" else "off"
        # --force: the switch happens even while the tenant serves (it drains first), as a
        # person switching for a job would; gpud would refuse a plain switch under load.
        await self._in_box(MUSHISHI, "mode", target, "--force", "--timeout", "90",
                           timeout=120)
        self.mode = target
        return f"mushishi mode {target} --force"

    async def backend_drop(self) -> str:
        count = self.rng.randint(1, 4)
        self.proxy.drop_next(count)
        return f"the relay to llama-server resets the next {count} requests' connections"

    async def cloud_errors(self) -> str:
        faults = []
        for _ in range(self.rng.randint(1, 4)):
            status = self.rng.choice([429, 429, 500, 502, 503])
            faults.append(self.cloud.rate_limit("1") if status == 429
                          else Fault.status_code(status))
        self.cloud.fail_next(*faults)
        return "the cloud provider answers " + ", ".join(str(f.status) for f in faults)

    async def ledger_disk_full(self) -> str:
        seconds = self.rng.uniform(3, 10)
        # dd stops at ENOSPC (exit 1): the ledger's filesystem is then full.
        await asyncio.to_thread(self.box.run, ["dd", "if=/dev/zero", f"of={FILLER}",
                                               "bs=64k", "status=none"], check=False)
        try:
            left = await self._in_box("df", "--output=avail", "-k", EGRESS_STATE)
            await asyncio.sleep(seconds)
        finally:
            await self._in_box("rm", "-f", FILLER)
        return (f"the ledger's filesystem full for {seconds:.1f} s "
                f"(KiB left: {left.split()[-1]})")
