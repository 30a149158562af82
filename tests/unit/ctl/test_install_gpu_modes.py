"""`mushishi install` for GPU modes: preparation links, tenant ordering, port conflicts."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from mushishi.ctl.install import (
    RUNTIME_DROPINS,
    UNIT_DIR,
    plan_install,
    port_conflicts,
    render_tenant_dropins,
)
from mushishi.shared.config import load_settings
from tests.paths import BINDIR, EXAMPLE_CONFIG
from tests.unit.ctl.allow_lists import admits
from tests.unit.ctl.test_install import install

UNITS = PurePosixPath(UNIT_DIR)


def test_every_mode_target_wants_its_gpu_preparation(tmp_path: Path) -> None:
    plan = plan_install(load_settings(EXAMPLE_CONFIG), BINDIR, root=tmp_path, config_text=None)
    for mode in ("forensic", "agent", "creative", "audio", "off"):
        link = UNITS / f"mushishi-{mode}.target.wants" / f"mushishi-gpu-prepare@{mode}.service"
        assert plan.symlinks[link] == "../mushishi-gpu-prepare@.service"


def test_tenants_start_after_every_preparation_and_reach_the_tailnet(tmp_path: Path) -> None:
    files = render_tenant_dropins(load_settings(EXAMPLE_CONFIG))
    order = files[UNITS / "mushishi-tenant@.service.d" / "order.conf"]
    assert order.splitlines()[-1] == (
        "After=mushishi-gpu-prepare@agent.service mushishi-gpu-prepare@audio.service "
        "mushishi-gpu-prepare@creative.service mushishi-gpu-prepare@forensic.service "
        "mushishi-gpu-prepare@off.service")
    plan = plan_install(load_settings(EXAMPLE_CONFIG), BINDIR, root=tmp_path, config_text=None)
    networks, _ = plan.files[UNITS / "mushishi-tenant@.service.d" / "local-networks.conf"]
    assert admits(networks, "100.64.0.1") and admits(networks, "127.0.0.1")
    assert not admits(networks, "127.0.0.53") and not admits(networks, "100.100.100.100")


def test_tenants_sharing_a_port_conflict_with_one_way_ordering() -> None:
    settings = load_settings(EXAMPLE_CONFIG)
    assert port_conflicts(settings) == {"vllm-agent": ["vllm-forensic"],
                                        "vllm-forensic": ["vllm-agent"]}
    files = render_tenant_dropins(settings)
    agent = files[UNITS / "mushishi-tenant@vllm-agent.service.d" / "ports.conf"]
    forensic = files[UNITS / "mushishi-tenant@vllm-forensic.service.d" / "ports.conf"]
    assert "Conflicts=mushishi-tenant@vllm-forensic.service" in agent
    assert "Conflicts=mushishi-tenant@vllm-agent.service" in forensic
    # Only one direction: a cycle would make systemd drop a job.
    assert "After=" not in agent
    assert "After=mushishi-tenant@vllm-agent.service" in forensic
    assert not any("comfyui" in str(path) and path.name == "ports.conf" for path in files)


def test_dropping_a_port_sharer_prunes_its_conflict_dropin(tmp_path: Path) -> None:
    install(tmp_path)
    dropin = tmp_path / "etc/systemd/system/mushishi-tenant@vllm-agent.service.d/ports.conf"
    assert dropin.is_file()
    edited = tmp_path / "edited.toml"
    edited.write_text(EXAMPLE_CONFIG.read_text().replace(
        'vram_mib = 24000\nport = 8000', 'vram_mib = 24000\nport = 8002'))
    result = install(tmp_path, edited)
    assert f"removed {dropin}" in result.stdout
    assert not dropin.exists()


def test_removed_mode_loses_its_preparation_link(tmp_path: Path) -> None:
    with_coding = tmp_path / "coding.toml"
    with_coding.write_text(EXAMPLE_CONFIG.read_text() + '\n[modes.coding]\ntenants = []\n')
    install(tmp_path, with_coding)
    link = (tmp_path / "etc/systemd/system/mushishi-coding.target.wants/"
            "mushishi-gpu-prepare@coding.service")
    assert link.is_symlink()
    install(tmp_path)
    assert not link.is_symlink()


def test_gpud_may_probe_tenants_anywhere_in_the_local_networks(tmp_path: Path) -> None:
    """A busy probe on a tailnet address must not be dropped by gpud's IPAddressDeny=any
    (an unreadable probe counts as busy: every switch would be refused)."""
    plan = plan_install(load_settings(EXAMPLE_CONFIG), "/opt/mushishi/bin", root=tmp_path,
                        config_text=None)
    text, _ = plan.files[UNITS / "mushishi-gpud.service.d" / "local-networks.conf"]
    assert "[Service]" in text
    for address in ("127.0.0.1", "::1", "100.64.0.1", "100.100.100.99", "100.127.255.254"):
        assert admits(text, address), address
    # Never a resolver: not systemd-resolved's stub, not Tailscale's MagicDNS.
    assert not admits(text, "127.0.0.53") and not admits(text, "100.100.100.100")


def test_container_tenants_get_the_drop_in_their_runtime_needs(tmp_path: Path) -> None:
    settings = load_settings(EXAMPLE_CONFIG)
    files = render_tenant_dropins(settings)
    docker = files[UNITS / "mushishi-tenant@vllm-forensic.service.d" / "runtime.conf"]
    lines = docker.splitlines()
    assert {"Wants=mushishi-tenant-network.service",
            "After=mushishi-tenant-network.service docker.service", "User=root",
            "CapabilityBoundingSet=CAP_SYS_ADMIN CAP_SYS_PTRACE", "ProtectControlGroups=no",
            "RestrictNamespaces=net"} <= set(lines)
    assert "Requires=mushishi-tenant-network.service" not in lines
    podman = RUNTIME_DROPINS["podman"].splitlines()
    assert {"Delegate=yes", "User=root", "SystemCallFilter="} <= set(podman)
    assert not any(line.startswith(("NoNewPrivileges=", "RestrictSUIDSGID=")) for line in podman)
    edited = tmp_path / "edited.toml"
    edited.write_text(EXAMPLE_CONFIG.read_text().replace(
        '[tenants.comfyui]\nruntime = "docker"\n', "[tenants.comfyui]\n").replace(
        '["docker", "compose", "-f", "/etc/mushishi/compose/comfyui.yml", "up"]',
        '["/opt/comfyui/run.sh"]'))
    plain = render_tenant_dropins(load_settings(edited))
    assert not any(path.name == "runtime.conf" and "comfyui" in str(path) for path in plain)


def test_a_tenant_leaving_docker_loses_its_runtime_drop_in(tmp_path: Path) -> None:
    install(tmp_path)
    units = tmp_path / "etc/systemd/system"
    dropin = units / "mushishi-tenant@comfyui.service.d/runtime.conf"
    assert dropin.is_file()
    assert (units / "mushishi-tenant-network.service").is_file()
    old_group = units / "mushishi-tenant@.service.d/docker.conf"
    old_group.write_text("[Service]\nSupplementaryGroups=docker\n")
    edited = tmp_path / "edited.toml"
    edited.write_text(EXAMPLE_CONFIG.read_text().replace(
        '[tenants.comfyui]\nruntime = "docker"\n', "[tenants.comfyui]\n").replace(
        '["docker", "compose", "-f", "/etc/mushishi/compose/comfyui.yml", "up"]',
        '["/opt/comfyui/run.sh"]'))
    result = install(tmp_path, edited)
    assert f"removed {dropin}" in result.stdout and f"removed {old_group}" in result.stdout
    assert not dropin.exists() and not old_group.exists()
