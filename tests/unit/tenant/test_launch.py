"""What the tenant runner starts: argv with the tenant's label and env, or a refusal."""

from __future__ import annotations

from mushishi.services.tenant.launch import plan_launch, tenant_environment
from mushishi.shared.config.gpu import PHONE_HOME_OFF, TenantSettings

ENV_OPTIONS = [f"--env={key}" for key in PHONE_HOME_OFF]


def tenant(command: list[str], runtime: str = "docker", **fields: object) -> TenantSettings:
    return TenantSettings(command=command, runtime=runtime, health_url="http://127.0.0.1:1/",
                          vram_mib=1, **fields)  # type: ignore[arg-type]


def test_docker_run_gets_the_label_and_the_environment_before_its_own_options() -> None:
    command = ["/usr/bin/docker", "run", "--rm", "--network", "mushishi-tenants", "img", "-e",
               "x"]
    launch = plan_launch("vllm", tenant(command), "mushishi-tenants")
    assert launch.refusal is None
    assert launch.argv == ["/usr/bin/docker", "run", "--label=io.mushishi.tenant=vllm",
                           *ENV_OPTIONS, "--rm", "--network", "mushishi-tenants", "img", "-e",
                           "x"]
    assert launch.env == PHONE_HOME_OFF


def test_podman_run_gets_the_environment_and_compose_and_processes_are_left_alone() -> None:
    podman = ["podman", "run", "--cgroups=split", "img"]
    assert plan_launch("t", tenant(podman, "podman"), "n").argv == [
        "podman", "run", *ENV_OPTIONS, "--cgroups=split", "img"]
    compose = ["docker", "compose", "-f", "c.yml", "up"]
    assert plan_launch("t", tenant(compose), "n").argv == compose
    process = ["/usr/bin/vllm", "serve", "run"]
    assert plan_launch("t", tenant(process, "process"), "n").argv == process


def test_a_docker_run_on_another_network_is_refused_naming_container_and_network() -> None:
    default = plan_launch("vllm", tenant(["docker", "run", "--name", "v", "img"]),
                          "mushishi-tenants")
    assert default.refusal == ("tenant vllm: container v would join network bridge; a Docker "
                               "tenant may join only mushishi-tenants (add "
                               "--network=mushishi-tenants to tenants.vllm.command)")
    host = plan_launch("vllm", tenant(["docker", "run", "--net=host", "img"]),
                       "mushishi-tenants")
    assert host.refusal is not None
    assert "container of image img would join network host" in host.refusal


def test_a_command_its_runtime_cannot_confine_is_refused() -> None:
    launch = plan_launch("p", tenant(["podman", "run", "img"], "podman"), "n")
    assert launch.refusal is not None
    assert launch.refusal.startswith("tenant p: `podman run` without --cgroups=split")
    assert launch.refusal.endswith("(tenants.p.command)")


def test_overriding_a_default_warns_and_other_variables_do_not() -> None:
    env, warnings = tenant_environment("v", tenant(["docker", "compose", "up"], env={
        "HF_HUB_OFFLINE": "0", "DO_NOT_TRACK": "1", "CUDA_VISIBLE_DEVICES": "0"}))
    assert env == {**PHONE_HOME_OFF, "HF_HUB_OFFLINE": "0", "CUDA_VISIBLE_DEVICES": "0"}
    assert warnings == ["tenant v: tenants.v.env sets HF_HUB_OFFLINE='0' over the default "
                        "HF_HUB_OFFLINE='1' (telemetry or network fetching off)"]
