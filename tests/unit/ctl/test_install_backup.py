"""`mushishi install` for backups and the watchdog: restic found once and written into the
config (comments kept), write access only where the units need it, credentials per unit.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path, PurePosixPath

from mushishi.ctl.install import Plan, find_restic, plan_install, record_restic_path
from mushishi.shared.config import load_settings
from tests.paths import BINDIR

CONFIG = """# my box — keep this comment
[backup]
# restic lives somewhere else on this machine
restic = "/opt/nowhere/restic"   # wrong on purpose
repository = "/data/repo"
textfile_dir = "/var/lib/node-exporter"

[[backup.sets]]
path = "/data/configs"
reason = "hand-written"

[[backup.sets]]
path = "/home/me/notes"
reason = "my notes"

[watchdog]
textfile_dir = "/var/lib/node-exporter"
"""


def install(root: Path, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [f"{BINDIR}/mushishi", "install", "--root", str(root), "--config", str(config)],
        capture_output=True, text=True, check=True)


def fake_restic(root: Path, where: str = "usr/bin/restic") -> None:
    path = root / where
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)


def test_install_writes_the_found_restic_into_the_config_keeping_comments(
        tmp_path: Path) -> None:
    fake_restic(tmp_path, "usr/local/bin/restic")
    config = tmp_path / "mushishi.toml"
    config.write_text(CONFIG)
    result = install(tmp_path, config)
    text = config.read_text()
    assert 'restic = "/usr/local/bin/restic"' in text
    assert "# my box — keep this comment" in text
    assert "# restic lives somewhere else on this machine" in text
    assert "backup.restic: /opt/nowhere/restic does not exist; found restic at " \
           "/usr/local/bin/restic" in result.stdout
    # Found once: the second install leaves the config alone.
    install(tmp_path, config)
    assert config.read_text() == text


def test_a_working_restic_path_is_never_rewritten(tmp_path: Path) -> None:
    fake_restic(tmp_path, "opt/nowhere/restic")
    fake_restic(tmp_path)
    config = tmp_path / "mushishi.toml"
    config.write_text(CONFIG)
    install(tmp_path, config)
    assert config.read_text() == CONFIG


def test_record_restic_path_adds_the_backup_table_when_absent() -> None:
    text = record_restic_path("# only a comment\n[router]\nlisten = []\n", "/usr/bin/restic")
    assert text.startswith("# only a comment\n[router]\nlisten = []\n")
    assert '[backup]\nrestic = "/usr/bin/restic"' in text


def test_find_restic_prefers_fixed_paths_and_uses_path_only_on_the_live_root(
        tmp_path: Path) -> None:
    assert find_restic(tmp_path, which=lambda name: "/home/me/.local/bin/restic") is None
    fake_restic(tmp_path, "usr/local/bin/restic")
    assert find_restic(tmp_path) == "/usr/local/bin/restic"


def test_backup_units_may_write_only_the_repository_and_textfiles(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    config = tmp_path / "mushishi.toml"
    config.write_text(CONFIG)
    install(tmp_path, config)
    units = tmp_path / "etc/systemd/system"
    for unit in ("mushishi-backup.service", "mushishi-backup-check.service"):
        paths = (units / f"{unit}.d/paths.conf").read_text().splitlines()
        assert "ReadWritePaths=-/data/repo" in paths
        assert "ReadWritePaths=-/var/lib/node-exporter" in paths
        # A declared set lives under /home: the unit may read it, nothing more.
        assert "ProtectHome=read-only" in paths
    watchdog = (units / "mushishi-watchdog.service.d/paths.conf").read_text().splitlines()
    assert "ReadWritePaths=-/var/lib/node-exporter" in watchdog
    assert "ProtectHome=read-only" not in watchdog
    # The repository directory is created once, setgid so its files share one group.
    assert (tmp_path / "data/repo").stat().st_mode & 0o7777 == 0o2750
    tmpfiles = (tmp_path / "etc/tmpfiles.d/mushishi.conf").read_text()
    assert "d /var/lib/node-exporter 2775 :root mushishi -\n" in tmpfiles
    assert tmpfiles.count("/var/lib/node-exporter") == 1


def test_repository_on_an_unmounted_disk_is_a_warning_not_a_created_directory(
        tmp_path: Path) -> None:
    config = tmp_path / "mushishi.toml"
    config.write_text(CONFIG)
    result = install(tmp_path, config)
    assert not (tmp_path / "data").exists()
    assert "backup.repository /data/repo: its parent directory does not exist" in result.stderr


def test_watchdog_loads_the_restic_password_to_read_snapshots(tmp_path: Path) -> None:
    credentials = tmp_path / "etc/mushishi/credentials"
    credentials.mkdir(parents=True)
    for name in ("restic-password", "ntfy-topic"):
        (credentials / name).write_text("x")
    config = tmp_path / "mushishi.toml"
    config.write_text(CONFIG)
    install(tmp_path, config)
    units = tmp_path / "etc/systemd/system"
    watchdog = (units / "mushishi-watchdog.service.d/credentials.conf").read_text()
    assert "LoadCredential=restic-password:/etc/mushishi/credentials/restic-password" in watchdog
    assert "LoadCredential=ntfy-topic:/etc/mushishi/credentials/ntfy-topic" in watchdog
    for unit in ("mushishi-alert@.service", "mushishi-sovereignty.service"):
        alert = (units / f"{unit}.d/credentials.conf").read_text()
        assert "restic-password" not in alert
        assert "LoadCredential=ntfy-topic:/etc/mushishi/credentials/ntfy-topic" in alert


# -- off-box copies ------------------------------------------------------------------------

COPIES = """[backup]
repository = "/data/repo"
[[backup.sets]]
path = "/data/configs"
reason = "hand-written"
[[backup.copies]]
repository = "sftp:backup@offsite.example:/srv/restic/mushishi"
password_credential = "restic-copy-password"
known_hosts = "/etc/mushishi/known_hosts"
ssh_key_credential = "restic-copy-ssh-key"
[[backup.copies]]
repository = "rest:https://mushishi:pw@198.51.100.7:8000/box/"
[[backup.copies]]
repository = "/mnt/usb/restic"
"""
RESOLVED = {"offsite.example": ["198.51.100.2", "2001:db8::2"]}


def plan_copies(root: Path, text: str = COPIES,
                resolved: dict[str, list[str]] | None = None) -> Plan:
    table = RESOLVED if resolved is None else resolved

    def resolve(host: str) -> list[str]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    config = root / "mushishi.toml"
    config.write_text(text)
    return plan_install(load_settings(config), BINDIR, root=root, config_text=None,
                        resolve=resolve)


def unit_file(plan: Plan, path: str) -> str:
    return plan.files[PurePosixPath("etc/systemd/system") / path][0]


def test_backup_units_may_reach_exactly_the_copy_hosts_resolved_at_install(
        tmp_path: Path) -> None:
    plan = plan_copies(tmp_path)
    for unit in ("mushishi-backup.service", "mushishi-backup-check.service"):
        text = unit_file(plan, f"{unit}.d/network.conf")
        lines = text.splitlines()
        assert [line for line in lines if line.startswith("IPAddress")] == [
            "IPAddressDeny=any", "IPAddressAllow=localhost", "IPAddressAllow=198.51.100.2",
            "IPAddressAllow=2001:db8::2", "IPAddressAllow=198.51.100.7"]
        assert ('Environment="MUSHISHI_PINNED_HOSTS=198.51.100.7=198.51.100.7 '
                'offsite.example=198.51.100.2,2001:db8::2"') in lines
        assert "#   backup.copies[0].repository: offsite.example -> 198.51.100.2, " \
               "2001:db8::2" in lines
    # The watchdog reads the copies from last.json: it stays off the network.
    assert "IPAddressAllow=198.51.100.2" not in unit_file(
        plan, "mushishi-watchdog.service.d/network.conf")


def test_an_unresolvable_copy_host_is_pinned_to_nothing_and_warned_about(
        tmp_path: Path) -> None:
    plan = plan_copies(tmp_path, resolved={})
    text = unit_file(plan, "mushishi-backup.service.d/network.conf")
    assert "IPAddressAllow=198.51.100.2" not in text
    assert "offsite.example=" in text and "-> unresolved" in text
    assert any(w.startswith("backup.copies[0].repository: cannot resolve offsite.example")
               for w in plan.warnings), plan.warnings
    assert ("backup.copies[0].known_hosts: /etc/mushishi/known_hosts does not exist: put the "
            "off-box host's key there") in " ".join(plan.warnings)


def test_copy_credentials_go_to_the_backup_units_only(tmp_path: Path) -> None:
    credentials = tmp_path / "etc/mushishi/credentials"
    credentials.mkdir(parents=True)
    for name in ("restic-password", "restic-copy-password", "restic-copy-ssh-key",
                 "ntfy-topic"):
        (credentials / name).write_text("x")
    plan = plan_copies(tmp_path)
    for unit in ("mushishi-backup.service", "mushishi-backup-check.service"):
        loaded = unit_file(plan, f"{unit}.d/credentials.conf")
        for name in ("restic-password", "restic-copy-password", "restic-copy-ssh-key"):
            assert f"LoadCredential={name}:/etc/mushishi/credentials/{name}" in loaded
    watchdog = unit_file(plan, "mushishi-watchdog.service.d/credentials.conf")
    assert "restic-copy" not in watchdog and "restic-password" in watchdog


def test_a_copy_on_a_local_disk_is_writable_and_created_only_when_mounted(
        tmp_path: Path) -> None:
    plan = plan_copies(tmp_path)
    paths = unit_file(plan, "mushishi-backup.service.d/paths.conf").splitlines()
    assert "ReadWritePaths=-/mnt/usb/restic" in paths and "ReadWritePaths=-/data/repo" in paths
    assert PurePosixPath("mnt/usb/restic") not in plan.directories
    assert any(w.startswith("backup.copies[2].repository /mnt/usb/restic: its parent "
                            "directory does not exist") for w in plan.warnings)
    (tmp_path / "mnt/usb").mkdir(parents=True)
    assert plan_copies(tmp_path).directories[PurePosixPath("mnt/usb/restic")] == 0o2750


def test_the_units_resolver_must_be_reachable_under_their_confinement(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/resolv.conf").write_text("nameserver 192.168.1.1\n")
    plan = plan_copies(tmp_path)
    assert any("resolve offsite.example under IPAddressDeny=any" in w and "192.168.1.1" in w
               for w in plan.warnings), plan.warnings
    (tmp_path / "etc/resolv.conf").write_text("nameserver 127.0.0.53\n")
    assert not any("IPAddressDeny=any" in w for w in plan_copies(tmp_path).warnings)
