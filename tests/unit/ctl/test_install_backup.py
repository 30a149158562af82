"""`mushishi install` for backups and the watchdog: restic found once and written into the
config (comments kept), write access only where the units need it, credentials per unit.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from mushishi.ctl.install import find_restic, record_restic_path
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
