"""`[gpu]`, `[modes.*]` and `[tenants.*]`: one GPU mode at a time, and what runs in each."""

from __future__ import annotations

import re
from ipaddress import IPv4Network
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

from mushishi.shared.config._base import AbsolutePath, Issue, Section
from mushishi.shared.config.router import parse_tcp_listen

if TYPE_CHECKING:
    from mushishi.shared.config.settings import MushishiSettings

_UNIT_SAFE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")

DEFAULT_MODES = ("forensic", "agent", "creative", "audio", "off")

# The bridge of `[gpu] docker_network` (DESIGN §9): fixed, so firewall rules can name it.
DOCKER_BRIDGE = "br-mushishi"
# Label the tenant runner puts on the containers of `docker run` tenants, to find them again.
TENANT_LABEL = "io.mushishi.tenant"
# Telemetry and network fetching off in every tenant, unless [tenants.X] env says otherwise.
PHONE_HOME_OFF: dict[str, str] = {
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DOCKER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
# Where Docker networks may lie: private IPv4 space (RFC 1918).
_PRIVATE_V4 = (IPv4Network("10.0.0.0/8"), IPv4Network("172.16.0.0/12"),
               IPv4Network("192.168.0.0/16"))


class GpuSettings(Section):
    """How gpud reads the GPU."""

    probe: Literal["nvml", "simulated"] = Field(
        default="nvml",
        description="`nvml` reads the real GPU through pynvml; `simulated` reads "
        "simulated_state, for machines without a GPU (CI, the demo).",
    )
    simulated_state: AbsolutePath = Field(
        default="/run/mushishi/gpu-sim.json",
        description="JSON file read by the simulated probe: total_mib, used_mib, util_percent, "
        "temperature_c, power_w, processes[{pid, name, used_mib}].",
    )
    device_index: int = Field(default=0, ge=0, description="NVML index of the managed GPU.")
    metrics_listen: str = Field(
        default="127.0.0.1:9642", description="HOST:PORT of gpud's /metrics."
    )

    @field_validator("metrics_listen")
    @classmethod
    def _metrics_listen_parses(cls, value: str) -> str:
        parse_tcp_listen(value)
        return value
    stop_list: list[str] = Field(
        default=[],
        description="Container or process names that may be stopped when a mode needs their "
        "VRAM. Anything not listed is only reported, never touched.",
    )
    docker_host: str = Field(
        default="unix:///var/run/docker.sock",
        description="Docker Engine API the stop-list uses to find and stop containers "
        "(a `unix://` socket, or `tcp://` on this machine); unreachable means no container "
        "is stopped.",
    )
    free_wait_s: float = Field(
        default=30.0, ge=0,
        description="After stopping stop-list items, how long to wait for the driver to "
        "release their VRAM before the mode's tenants start anyway (and their guard decides).",
    )
    busy_util_percent: int = Field(
        default=10, ge=1, le=100,
        description="GPU utilisation (mean over util_sample_s) from which a tenant without a "
        "busy probe counts as busy; below it a loaded but idle GPU is not busy.",
    )
    util_sample_s: float = Field(
        default=1.0, gt=0, le=30,
        description="How long the utilisation backstop samples the GPU (one read every 0.2 s).",
    )
    probe_timeout_s: float = Field(
        default=5.0, gt=0,
        description="HTTP timeout of one busy-probe read; an unreadable probe counts as busy "
        "for SwitchMode (use force to override).",
    )
    poll_interval_s: float = Field(
        default=5.0, gt=0,
        description="How often gpud reads VRAM, utilisation, temperature and power for its "
        "D-Bus properties and /metrics.",
    )
    docker_network: str = Field(
        default="mushishi-tenants",
        description="The only Docker network a `runtime = \"docker\"` tenant may join. "
        "mushishi creates it (bridge `" + DOCKER_BRIDGE + "`, subnet docker_subnet); "
        "mushishi-tenant-network.service lets traffic forwarded out of it reach only "
        "router.local_networks. A tenant with a container on any other network (the default "
        "bridge, host, a user network) fails to start.",
    )
    docker_subnet: IPv4Network = Field(
        default=IPv4Network("172.30.240.0/24"),
        description="Subnet of docker_network, fixed so rules and the confinement probe can "
        "name it (private IPv4 space; it must not overlap router.local_networks unless it "
        "lies wholly inside one of them).",
    )
    tenant_probe_interval_s: float = Field(
        default=15.0, gt=0, le=3600,
        description="How often a running tenant's confinement is probed again (a datagram to "
        "router.confinement_probe from inside each of its cgroups and network namespaces); "
        "the result is what the router's `tenants` sovereignty layer shows.",
    )

    @field_validator("docker_network")
    @classmethod
    def _network_is_a_docker_name(cls, value: str) -> str:
        if not _DOCKER_NAME.match(value) or value in ("bridge", "host", "none", "default"):
            raise ValueError(f"{value!r} is not a Docker network name of mushishi's own "
                             "(letters, digits, '_', '.', '-'; not bridge, host, none)")
        return value

    @field_validator("docker_subnet")
    @classmethod
    def _subnet_is_private(cls, value: IPv4Network) -> IPv4Network:
        if not any(value.subnet_of(space) for space in _PRIVATE_V4) or value.prefixlen > 29:
            raise ValueError(f"{value} must be a private IPv4 network (inside 10.0.0.0/8, "
                             "172.16.0.0/12 or 192.168.0.0/16) of /29 or larger")
        return value


class BusyProbeSettings(Section):
    """How to tell whether a tenant has work in flight."""

    kind: Literal["vllm", "comfyui", "json", "none"] = Field(
        description="`vllm` reads /metrics (num_requests_running + num_requests_waiting), "
        "`comfyui` reads /queue, `json` reads a number at json_path, `none` relies on GPU "
        "utilisation."
    )
    url: str | None = Field(default=None, description="URL the probe reads.")
    json_path: str | None = Field(
        default=None, description="For kind=json: dotted path to the in-flight count."
    )


class ModeSwitchingSettings(Section):
    """Switches nobody typed: keys of `[modes]` itself, beside the `[modes.<name>]` tables."""

    idle_mode: str | None = Field(
        default=None,
        description="The mode the router returns the box to after `idle_after_s` without GPU "
        "work (requests to backends with `modes`; the CPU floor and cloud hops do not count); "
        "unset: no idle return. gpud still refuses while a hold exists or a tenant is busy.",
    )
    idle_after_s: float = Field(
        default=1800.0, gt=0,
        description="Seconds without GPU work (and since the last switch) before the idle "
        "return to `idle_mode`.",
    )
    min_mode_dwell_s: float = Field(
        default=120.0, ge=0,
        description="A mode stays at least this long before the router asks for another on a "
        "request's behalf (`on_mode_mismatch = \"switch\"`), so that two profiles cannot "
        "thrash the GPU; a person's switch (`mushishi mode`) is never held back. Counted from "
        "when the router saw the mode become active.",
    )


# Keys of [modes] that are settings, not mode names (mode_switching in the model).
MODE_SWITCHING_KEYS = tuple(ModeSwitchingSettings.model_fields)


class ModeSettings(Section):
    """One GPU mode, realised as mushishi-<name>.target."""

    tenants: list[str] = Field(default=[], description="Tenants ([tenants.*]) this mode runs.")
    description: str = Field(default="", description="Shown by `mushishi mode` and the target.")
    power_limit_w: int | None = Field(
        default=None, gt=0, description="GPU power limit set before the tenants start."
    )


class TenantSettings(Section):
    """One GPU workload, run by mushishi-tenant@<name>.service."""

    command: list[str] = Field(
        min_length=1,
        description="Command run in the foreground (argv, absolute program path or a program "
        "the unit's fixed PATH finds, such as docker).",
    )
    health_url: str = Field(description="URL that answers 2xx once the tenant can serve.")
    busy_probe: BusyProbeSettings = Field(
        default=BusyProbeSettings(kind="none"), description="How to see work in flight."
    )
    vram_mib: int = Field(ge=0, description="VRAM the tenant needs; checked before it starts.")
    port: int | None = Field(
        default=None, gt=0, lt=65536, description="TCP port it serves on; tenants sharing a "
        "port conflict with each other."
    )
    drain_timeout_s: float = Field(
        default=300.0, ge=0, description="On stop, how long to wait for in-flight work."
    )
    start_timeout_s: float = Field(
        default=900.0, gt=0, description="How long the tenant may take to become healthy."
    )
    stop_command: list[str] | None = Field(
        default=None,
        description="Command run to stop it; default for `docker compose … up` is the matching "
        "`docker compose … down`.",
    )
    stop_timeout_s: float = Field(
        default=60.0, gt=0,
        description="After draining (and stop_command), how long the command may take to exit "
        "on SIGTERM before it is killed.",
    )
    runtime: Literal["process", "docker", "podman"] = Field(
        default="process",
        description="How the tenant is confined. `process`: its own processes, by the unit's "
        "IPAddressDeny=. `docker`: `docker run …` or `docker compose … up`; every container "
        "must join only [gpu] docker_network, whose forwarded traffic reaches only "
        "router.local_networks. `podman`: `podman run --cgroups=split …`, so the containers "
        "stay in the unit's cgroup and its IPAddressDeny=. The tenant is declared ready only "
        "once a probe from inside each of its cgroups and network namespaces fails to reach "
        "router.confinement_probe.",
    )
    env: dict[str, str] = Field(
        default={},
        description="Environment of the tenant's command, merged over the defaults that turn "
        "telemetry and network fetching off (" + ", ".join(
            f"{k}={v}" for k, v in PHONE_HOME_OFF.items()) + "); overriding a default is "
        "logged as a warning. `docker run`/`podman run` tenants pass every variable into the "
        "container (`--env=NAME`); a compose file must list them under `environment:`.",
    )

    @field_validator("env")
    @classmethod
    def _env_names_are_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not an environment variable name")
        return value


def _check_unit_name(kind: str, name: str) -> Issue | None:
    if _UNIT_SAFE_NAME.match(name):
        return None
    return Issue(
        f"{kind}.{name}",
        "names become systemd unit names: use lowercase letters, digits and '-' (max 63)",
    )


def _check_busy_probe(name: str, probe: BusyProbeSettings) -> list[Issue]:
    path = f"tenants.{name}.busy_probe"
    issues = []
    if probe.kind != "none" and not probe.url:
        issues.append(Issue(f"{path}.url", f"kind {probe.kind!r} needs the URL it reads"))
    if probe.kind == "json" and not probe.json_path:
        issues.append(Issue(f"{path}.json_path",
                            "kind 'json' needs the dotted path of the in-flight count"))
    return issues


def _check_ports(settings: MushishiSettings) -> list[Issue]:
    """Tenants that share a port conflict, so one mode cannot run two of them."""
    issues = []
    for mode_name, mode in settings.modes.items():
        by_port: dict[int, str] = {}
        for tenant in mode.tenants:
            port = settings.tenants[tenant].port if tenant in settings.tenants else None
            if port is None:
                continue
            if port in by_port and by_port[port] != tenant:
                issues.append(Issue(
                    f"modes.{mode_name}.tenants",
                    f"tenants {by_port[port]!r} and {tenant!r} both serve port {port}: "
                    "tenants sharing a port conflict and cannot run in the same mode",
                ))
            by_port.setdefault(port, tenant)
    return issues


def check(settings: MushishiSettings) -> list[Issue]:
    """Modes must name defined tenants; names must be valid unit-name parts."""
    issues: list[Issue] = []
    for name in settings.modes:
        if (issue := _check_unit_name("modes", name)) is not None:
            issues.append(issue)
    idle = settings.mode_switching.idle_mode
    if idle is not None and idle not in settings.modes:
        issues.append(Issue("modes.idle_mode", f"unknown mode {idle!r} (modes: "
                            f"{', '.join(sorted(settings.modes))})"))
    for name in settings.tenants:
        if (issue := _check_unit_name("tenants", name)) is not None:
            issues.append(issue)
    for name, mode in settings.modes.items():
        for index, tenant in enumerate(mode.tenants):
            if tenant not in settings.tenants:
                issues.append(Issue(
                    f"modes.{name}.tenants[{index}]",
                    f"unknown tenant {tenant!r} (tenants: "
                    f"{', '.join(sorted(settings.tenants)) or 'none defined'})",
                ))
    for name, tenant in settings.tenants.items():
        issues += _check_busy_probe(name, tenant.busy_probe)
        issues += _check_runtime(name, tenant)
    issues += _check_ports(settings)
    issues += _check_docker_subnet(settings)
    return issues


def _check_runtime(name: str, tenant: TenantSettings) -> list[Issue]:
    """The command must be one the runtime confines."""
    from mushishi.shared.tenant_commands import runtime_problem

    problem = runtime_problem(tenant.runtime, tenant.command)
    if problem is None:
        return []
    key = "runtime" if tenant.runtime == "process" else "command"
    return [Issue(f"tenants.{name}.{key}", problem)]


def _check_docker_subnet(settings: MushishiSettings) -> list[Issue]:
    """The tenants' subnet lies wholly inside a local network or outside all of them."""
    subnet = settings.gpu.docker_subnet
    for network in settings.router.local_networks:
        if (network.version == subnet.version and subnet.overlaps(network)  # type: ignore[arg-type]
                and not subnet.subnet_of(network)):  # type: ignore[arg-type]
            return [Issue("gpu.docker_subnet",
                          f"{subnet} overlaps router.local_networks entry {network} without "
                          "lying inside it: the tenants' bridge would take that local "
                          "network's addresses over; pick a subnet outside every local "
                          "network (or wholly inside one)")]
    return []




def mode_target(mode: str) -> str:
    """The systemd target that realises a mode."""
    return f"mushishi-{mode}.target"


def tenant_unit(tenant: str) -> str:
    """The service instance that runs a tenant."""
    return f"mushishi-tenant@{tenant}.service"


def prepare_unit(mode: str) -> str:
    """The oneshot that readies the GPU for a mode (power limit, stop-list) before its tenants."""
    return f"mushishi-gpu-prepare@{mode}.service"
