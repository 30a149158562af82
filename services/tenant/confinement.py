"""Is this tenant confined? Probed live from every place its code runs.

A place is a cgroup and a network namespace. For a plain process that is the unit's own
cgroup, where the runner itself stands, so the runner probes in-process. For Podman
(`--cgroups=split`) it is every sub-cgroup of the unit that holds a process, each entered
through one of its processes; for Docker it is every container of the tenant, entered
through its main process. Entering takes a helper process (`inside.py`), which moves into
the container's cgroup and joins its network namespace before it sends the datagram.

The tenant is confined when every place is (see mushishi.shared.confinement_probe for what
counts); one place that is not makes the tenant not confined, and one that cannot tell
(or none found yet) makes it not known.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path
from typing import TYPE_CHECKING

from mushishi.services.tenant.docker_api import ContainerFacts, DockerEngine, DockerError
from mushishi.shared.cgroups import (
    cgroup2_mount,
    processes_by_cgroup,
    unified_cgroup,
    unit_root,
)
from mushishi.shared.config.gpu import PHONE_HOME_OFF, TENANT_LABEL, TenantSettings
from mushishi.shared.config.router import parse_tcp_listen
from mushishi.shared.confinement_probe import DEFAULT_WAIT_S, ProbeResult, format_target, probe
from mushishi.shared.tenant_commands import compose_command

if TYPE_CHECKING:
    from mushishi.shared.config import MushishiSettings

HELPER_MODULE = "mushishi.services.tenant.inside"
HELPER_SLACK_S = 10.0


@dataclass(frozen=True, slots=True)
class ConfinementSettings:
    """What the runner needs to probe and publish, from [router] and [gpu]."""

    probe_host: str
    probe_port: int
    box_networks: tuple[IPv4Network, ...]
    interval_s: float
    require: bool
    docker_host: str
    docker_network: str
    docker_subnet: IPv4Network
    wait_s: float = DEFAULT_WAIT_S

    @classmethod
    def from_settings(cls, settings: MushishiSettings) -> ConfinementSettings:
        """router.confinement_probe and require_kernel_confinement, [gpu]'s Docker keys."""
        host, port = parse_tcp_listen(settings.router.confinement_probe)
        gpu = settings.gpu
        return cls(host, port, (gpu.docker_subnet,), gpu.tenant_probe_interval_s,
                   settings.router.require_kernel_confinement, gpu.docker_host,
                   gpu.docker_network, gpu.docker_subnet)

    @property
    def target(self) -> str:
        """`192.0.2.1:9`."""
        return format_target(self.probe_host, self.probe_port)


@dataclass(frozen=True, slots=True)
class Vantage:
    """A place the tenant's code runs, entered through `pid` (None: where the runner is)."""

    where: str
    pid: int | None


@dataclass(frozen=True, slots=True)
class Check:
    """One round: the verdict, the tenant's containers, and a forbidden attachment."""

    result: ProbeResult
    containers: tuple[ContainerFacts, ...] = ()
    forbidden: str | None = None


def combine(results: list[tuple[str, ProbeResult]], missing: str | None = None
            ) -> ProbeResult:
    """Every place refused -> True; one reached the probe -> False; else None."""
    for wanted in (False, None):
        for where, result in results:
            if result.confined is wanted:
                return ProbeResult(wanted, f"from {where}: {result.detail}")
    if missing is not None:
        return ProbeResult(None, missing)
    if not results:
        return ProbeResult(None, "nothing to probe yet")
    wheres = [where for where, _ in results]
    places = ", ".join(wheres[:3]) + (f" and {len(wheres) - 3} more" if len(wheres) > 3 else "")
    return ProbeResult(True, f"from {places}: {results[0][1].detail}")


def forbidden_attachment(tenant: str, containers: list[ContainerFacts] | tuple[ContainerFacts, ...],
                         network: str) -> str | None:
    """The one line refusing a container attached to another network than `network`."""
    ours = {c.id for c in containers} | {c.name for c in containers}
    for container in containers:
        if container.network_mode.startswith("container:"):
            other = container.network_mode.split(":", 1)[1]
            if other in ours or any(i.startswith(other) for i in ours):
                continue
            return (f"tenant {tenant}: container {container.name} shares the network of "
                    f"container {other}, not one of this tenant's; a Docker tenant may join "
                    f"only {network}")
        others = [n for n in container.networks if n != network]
        if others or not container.networks:
            joined = others[0] if others else (container.network_mode or "none")
            return (f"tenant {tenant}: container {container.name} is attached to network "
                    f"{joined}; a Docker tenant may join only {network}")
    return None


def env_warnings(tenant: str, containers: list[ContainerFacts] | tuple[ContainerFacts, ...],
                 expected: dict[str, str]) -> dict[str, str]:
    """Container id -> a warning naming the phone-home-off variables it runs without."""
    warnings = {}
    for container in containers:
        lacking = [key for key in PHONE_HOME_OFF
                   if key in expected and container.variables.get(key) != expected[key]]
        if lacking:
            warnings[container.id] = (
                f"tenant {tenant}: container {container.name} runs without "
                f"{', '.join(f'{k}={expected[k]}' for k in lacking)}: list them under "
                "`environment:` in the compose file (or remove the -e that overrides them)")
    return warnings


def cgroup_vantages(proc: Path = Path("/proc")) -> tuple[list[Vantage], str | None]:
    """Every (cgroup, network namespace) holding a process in this unit's cgroup tree.

    The runner's own place comes last (pid None); the second value says why no other
    place was found, for a runtime that must have one (Podman's containers).
    """
    own = unified_cgroup("self", proc)
    mount = cgroup2_mount((proc / "self" / "mounts").read_text())
    root = unit_root(own) if own else None
    unit = Vantage("the tenant's unit", None)
    if mount is None or root is None:
        return [unit], "the runner is not in a systemd service's cgroup"
    own_netns = _netns(proc, "self")
    seen: set[tuple[str, int | None]] = {(own or "", own_netns)}
    vantages: list[Vantage] = []
    base = mount / root.lstrip("/")
    for directory, pids in processes_by_cgroup(base).items():
        relative = "/" + str(directory.relative_to(mount))
        for pid in pids:
            key = (relative, _netns(proc, pid))
            if key[1] is None or key in seen:
                continue
            seen.add(key)
            short = str(directory.relative_to(base)) if directory != base else root
            vantages.append(Vantage(f"cgroup {_shorten(short)}", pid))
    if not vantages:
        return [unit], f"no container process in {root} yet"
    return [*vantages, unit], None


def _netns(proc: Path, pid: int | str) -> int | None:
    try:
        return (proc / str(pid) / "ns" / "net").stat().st_ino
    except OSError:
        return None


def _shorten(name: str) -> str:
    # libpod-payload-<64 hex> -> libpod-payload-<12 hex>, as podman ps shows ids.
    head, _, tail = name.rpartition("-")
    return f"{head}-{tail[:12]}" if head and len(tail) == 64 else name


class TenantConfinement:
    """Finds where a tenant runs and probes each place; one instance per runner."""

    def __init__(self, name: str, tenant: TenantSettings, settings: ConfinementSettings,
                 env: dict[str, str], *, docker: DockerEngine | None = None,
                 proc: Path = Path("/proc"),
                 in_process: Callable[[], ProbeResult] | None = None) -> None:
        self.name = name
        self.tenant = tenant
        self.settings = settings
        self.env = env
        self.docker = docker or DockerEngine(settings.docker_host)
        self.proc = proc
        self._in_process = in_process or (lambda: probe(
            settings.probe_host, settings.probe_port, settings.box_networks,
            wait_s=settings.wait_s))

    async def check(self) -> Check:
        """Probe every place the tenant runs now."""
        if self.tenant.runtime == "docker":
            return await self._check_docker()
        if self.tenant.runtime == "podman":
            vantages, missing = cgroup_vantages(self.proc)
        else:
            vantages, missing = [Vantage("the tenant's unit", None)], None
        results = await asyncio.gather(*(self._probe(v) for v in vantages))
        return Check(combine(list(zip((v.where for v in vantages), results, strict=True)),
                             missing))

    async def containers(self) -> list[ContainerFacts]:
        """The tenant's running containers (by label for `docker run`, by project for
        compose); DockerError when Docker cannot say."""
        listing = compose_command(self.tenant.command, "ps", "-q")
        if listing is None:
            label = f"{TENANT_LABEL}={self.name}"
            return await asyncio.to_thread(self.docker.containers, label=label)
        process = await asyncio.create_subprocess_exec(
            *listing, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **self.env})
        out, err = await process.communicate()
        if process.returncode != 0:
            raise DockerError(f"{' '.join(listing)} failed: "
                                    f"{err.decode(errors='replace').strip()[:200]}")
        ids = out.decode().split()
        return await asyncio.to_thread(self.docker.containers, ids=ids)

    async def _check_docker(self) -> Check:
        try:
            containers = await self.containers()
        except DockerError as error:
            return Check(ProbeResult(None, str(error)))
        forbidden = forbidden_attachment(self.name, containers, self.settings.docker_network)
        if forbidden is not None:
            return Check(ProbeResult(False, forbidden), tuple(containers), forbidden)
        if not containers:
            return Check(ProbeResult(None, f"no running container of tenant {self.name} yet"))
        vantages = [Vantage(f"container {c.name}", c.pid) for c in containers]
        results = await asyncio.gather(*(self._probe(v) for v in vantages))
        return Check(combine(list(zip((v.where for v in vantages), results, strict=True))),
                     tuple(containers))

    async def _probe(self, vantage: Vantage) -> ProbeResult:
        if vantage.pid is None:
            return await asyncio.to_thread(self._in_process)
        settings = self.settings
        argv = [sys.executable, "-m", HELPER_MODULE, "--pid", str(vantage.pid),
                "--host", settings.probe_host, "--port", str(settings.probe_port),
                "--wait", str(settings.wait_s),
                *(f"--box-network={n}" for n in settings.box_networks)]
        try:
            helper = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except OSError as error:
            return ProbeResult(None, f"cannot start the probe helper: {error}")
        try:
            async with asyncio.timeout(settings.wait_s + HELPER_SLACK_S):
                out, err = await helper.communicate()
        except TimeoutError:
            helper.kill()
            await helper.wait()
            return ProbeResult(None, "the probe helper did not answer in time")
        try:
            answer = json.loads(out.decode().strip().splitlines()[-1])
            return ProbeResult(answer["confined"], str(answer["detail"]))
        except (ValueError, IndexError, KeyError):
            text = (err or out).decode(errors="replace").strip().splitlines()
            return ProbeResult(None, f"the probe helper failed: {(text or ['no output'])[-1]}")
