"""`mushishi install --root`: complete, idempotent, and rendered from the config."""

from __future__ import annotations

import subprocess
from pathlib import Path

from mushishi.ctl.install import render_mode_target, shipped_unit_names
from mushishi.shared.config import load_settings
from mushishi.shared.config.gpu import DEFAULT_MODES
from tests.paths import BINDIR, EXAMPLE_CONFIG, REPO
from tests.unit.ctl.allow_lists import admits

DESIGN_UNITS = {
    "mushishi-router.service", "mushishi-router.socket", "mushishi-egress.service",
    "mushishi-egress.socket", "mushishi-gpud.service", "mushishi-cpu-floor.service",
    "mushishi-tenant@.service", "mushishi-watchdog.service", "mushishi-watchdog.timer",
    "mushishi-alert@.service", "mushishi-sovereignty.service", "mushishi-backup.service",
    "mushishi-backup.timer",
    "mushishi-backup-check.service", "mushishi-backup-check.timer",
    *(f"mushishi-{mode}.target" for mode in DEFAULT_MODES),
}


def install(root: Path, config: Path = EXAMPLE_CONFIG) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [f"{BINDIR}/mushishi", "install", "--root", str(root), "--config", str(config)],
        capture_output=True, text=True, check=True,
    )


def test_every_unit_of_the_design_ships() -> None:
    assert set(shipped_unit_names()) >= DESIGN_UNITS


def test_shipped_mode_targets_match_the_template() -> None:
    for mode in DEFAULT_MODES:
        shipped = (REPO / "units" / f"mushishi-{mode}.target").read_text()
        assert shipped == render_mode_target(mode, list(DEFAULT_MODES)), mode


def test_install_lays_everything_and_second_run_changes_nothing(tmp_path: Path) -> None:
    install(tmp_path)
    units = tmp_path / "etc/systemd/system"
    for name in DESIGN_UNITS:
        text = (units / name).read_text()
        assert "@" + "BINDIR@" not in text and "@HARDENING" not in text, name
        assert "@" + "ON_FAILURE@" not in text, name
    assert (units / "mushishi-router.service").read_text().count(f"{BINDIR}/mushishi-router")
    assert (tmp_path / "etc/dbus-1/system.d/io.mushishi.GpuMode1.conf").is_file()
    assert (tmp_path / "etc/sysusers.d/mushishi.conf").read_text().count("u mushishi")
    assert (tmp_path / "etc/mushishi/credentials").stat().st_mode & 0o777 == 0o700
    link = units / "mushishi-forensic.target.wants/mushishi-tenant@vllm-forensic.service"
    assert link.is_symlink()
    second = install(tmp_path)
    assert "already installed; nothing changed" in second.stdout


def test_every_service_but_the_alert_names_its_alert_without_a_doubled_suffix(
        tmp_path: Path) -> None:
    install(tmp_path)
    units = tmp_path / "etc/systemd/system"
    services = [n for n in shipped_unit_names() if n.endswith(".service")]
    assert len(services) >= 12
    for name in services:
        lines = [line for line in (units / name).read_text().splitlines()
                 if line.startswith("OnFailure=")]
        if name == "mushishi-alert@.service":
            assert lines == [], "an alert that fails must not alert about itself"
        else:
            # %N: mushishi-backup.service fails -> mushishi-alert@mushishi-backup.service
            assert lines == ["OnFailure=mushishi-alert@%N.service"], name
    # The alert is handed that name (%i) and restores the unit from it.
    alert = (units / "mushishi-alert@.service").read_text()
    assert f"ExecStart={BINDIR}/mushishi-alert %i\n" in alert


def test_install_renders_router_sockets_and_local_networks(tmp_path: Path) -> None:
    install(tmp_path)
    units = tmp_path / "etc/systemd/system"
    listen = (units / "mushishi-router.socket.d/listen.conf").read_text()
    assert "ListenStream=\nListenStream=127.0.0.1:4000\nListenStream=/run/mushishi/router.sock" \
        in listen
    for dropin in ("mushishi-router.service.d/local-networks.conf",
                   "mushishi-router.socket.d/addresses.conf"):
        allow = (units / dropin).read_text()
        assert "IPAddressDeny=any\nIPAddressAllow=\n" in allow, dropin
        for address in ("127.0.0.1", "::1", "100.64.0.1", "100.127.255.254"):
            assert admits(allow, address), (dropin, address)
        for resolver in ("127.0.0.53", "127.0.0.54", "127.0.0.2", "100.100.100.100"):
            assert not admits(allow, resolver), (dropin, resolver)


def test_install_loads_only_present_credentials_and_warns_for_the_rest(tmp_path: Path) -> None:
    credentials = tmp_path / "etc/mushishi/credentials"
    credentials.mkdir(parents=True)
    (credentials / "ngc-api-key").write_text("k")
    result = install(tmp_path)
    dropin = (tmp_path / "etc/systemd/system/mushishi-egress.service.d/credentials.conf")
    assert dropin.read_text().splitlines()[-1] == (
        "LoadCredential=ngc-api-key:/etc/mushishi/credentials/ngc-api-key")
    assert "credential 'groq-api-key' (for mushishi-egress.service) is missing" in result.stderr
    assert not (tmp_path / "etc/systemd/system/mushishi-router.service.d/credentials.conf"
                ).exists()


def test_removed_tenant_link_is_pruned(tmp_path: Path) -> None:
    install(tmp_path)
    text = EXAMPLE_CONFIG.read_text().replace('tenants = ["comfyui"]', "tenants = []")
    edited = tmp_path / "edited.toml"
    edited.write_text(text)
    result = install(tmp_path, edited)
    assert "removed" in result.stdout
    assert not (tmp_path / "etc/systemd/system/mushishi-creative.target.wants/"
                "mushishi-tenant@comfyui.service").exists()


def test_extra_mode_from_config_gets_its_own_target(tmp_path: Path) -> None:
    text = EXAMPLE_CONFIG.read_text() + '\n[modes.coding]\ntenants = ["vllm-agent"]\n'
    config = tmp_path / "coding.toml"
    config.write_text(text)
    install(tmp_path / "root", config)
    units = tmp_path / "root/etc/systemd/system"
    target = (units / "mushishi-coding.target").read_text()
    assert "AllowIsolate=yes" in target
    assert "mushishi-forensic.target" in target.split("Conflicts=")[1]
    assert "mushishi-coding.target" in (units / "mushishi-forensic.target").read_text()
    assert load_settings(config).modes["coding"].tenants == ["vllm-agent"]
