"""How the tenant runner starts a tenant's command (pure): its argv and its environment.

Every tenant gets telemetry and network fetching off (`PHONE_HOME_OFF`), merged under the
tenant's own `env`. `docker run`/`podman run` get them as `--env=NAME` (the value comes from
the CLI's environment), and `docker run` gets a label naming the tenant, so the runner can
find its containers. A `docker run` that would join any network but `[gpu] docker_network`,
or a `podman run` without `--cgroups=split`, is refused before anything starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mushishi.shared.config.gpu import PHONE_HOME_OFF, TENANT_LABEL, TenantSettings
from mushishi.shared.tenant_commands import parse_run, requested_networks, runtime_problem


@dataclass(frozen=True, slots=True)
class Launch:
    """The argv to run, the variables to add to its environment, and what to say first."""

    argv: list[str]
    env: dict[str, str]
    warnings: list[str] = field(default_factory=list)
    refusal: str | None = None


def tenant_environment(name: str, tenant: TenantSettings) -> tuple[dict[str, str], list[str]]:
    """The phone-home-off defaults with the tenant's env over them, and one warning per
    default the tenant overrides."""
    warnings = [
        f"tenant {name}: tenants.{name}.env sets {key}={value!r} over the default "
        f"{key}={PHONE_HOME_OFF[key]!r} (telemetry or network fetching off)"
        for key, value in tenant.env.items()
        if key in PHONE_HOME_OFF and value != PHONE_HOME_OFF[key]]
    return {**PHONE_HOME_OFF, **tenant.env}, warnings


def plan_launch(name: str, tenant: TenantSettings, docker_network: str) -> Launch:
    """What `mushishi-tenant run NAME` starts, or why it refuses to."""
    env, warnings = tenant_environment(name, tenant)
    problem = runtime_problem(tenant.runtime, tenant.command)
    if problem is not None:
        return Launch(tenant.command, env, warnings, f"tenant {name}: {problem} "
                                                     f"(tenants.{name}.command)")
    run = parse_run(tenant.command)
    if run is None or tenant.runtime == "process":
        return Launch(tenant.command, env, warnings)
    options = [f"--env={key}" for key in env]
    if tenant.runtime == "docker":
        image = tenant.command[run.image_index] if run.image_index is not None else "?"
        container = (run.values("--name") or [f"of image {image}"])[-1]
        for network in requested_networks(run):
            if network != docker_network:
                return Launch(tenant.command, env, warnings, (
                    f"tenant {name}: container {container} would join network {network}; "
                    f"a Docker tenant may join only {docker_network} (add "
                    f"--network={docker_network} to tenants.{name}.command)"))
        options = [f"--label={TENANT_LABEL}={name}", *options]
    return Launch([*tenant.command[:run.run_index + 1], *options,
                   *tenant.command[run.run_index + 1:]], env, warnings)
