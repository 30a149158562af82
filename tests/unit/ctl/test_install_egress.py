"""`mushishi install` for the egress: its socket, state directory, credentials, and the
network confinement of every other unit that talks to the network."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomlkit

from mushishi.ctl.install import plan_install
from mushishi.shared.config import load_settings
from tests.paths import BINDIR, EXAMPLE_CONFIG, REPO

UNITS = Path("etc/systemd/system")


def plan_for(tmp_path: Path, **changes: dict) -> dict[str, str]:
    document = tomlkit.parse(EXAMPLE_CONFIG.read_text())
    for section, values in changes.items():
        for key, value in values.items():
            document[section][key] = value  # type: ignore[index]
    path = tmp_path / "mushishi.toml"
    path.write_text(tomlkit.dumps(document))
    plan = plan_install(load_settings(path), BINDIR, root=tmp_path, config_text=None)
    return {str(relative): text for relative, (text, _) in plan.files.items()}


def test_the_egress_socket_survives_a_restart_of_the_service() -> None:
    socket = (REPO / "units" / "mushishi-egress.socket").read_text()
    assert "PartOf=" not in socket.replace("No PartOf=", "")
    assert "SocketMode=0660" in socket and "SocketGroup=mushishi-egress\n" in socket
    assert "SocketUser=root\n" in socket
    router = (REPO / "units" / "mushishi-router.service").read_text()
    assert "SupplementaryGroups=mushishi-egress\n" in router
    for unit in ("mushishi-cpu-floor.service", "mushishi-tenant@.service"):
        assert "mushishi-egress" not in (REPO / "units" / unit).read_text()
    service = (REPO / "units" / "mushishi-egress.service").read_text()
    assert "IPAddressDeny" not in service.replace("no IPAddressDeny=", "")


def test_egress_socket_follows_the_config_and_a_custom_state_dir_is_writable(
    tmp_path: Path,
) -> None:
    files = plan_for(tmp_path, router={"egress_socket": "/run/mushishi/e.sock"},
                     egress={"state_dir": "/srv/mushishi/ledger"})
    assert "ListenStream=\nListenStream=/run/mushishi/e.sock\n" in \
        files[str(UNITS / "mushishi-egress.socket.d/listen.conf")]
    assert "ReadWritePaths=/srv/mushishi/ledger" in \
        files[str(UNITS / "mushishi-egress.service.d/state.conf")]
    assert "d /srv/mushishi/ledger 0750 mushishi mushishi -" in \
        files["etc/tmpfiles.d/mushishi.conf"]
    default = plan_for(tmp_path)
    assert str(UNITS / "mushishi-egress.service.d/state.conf") not in default


@pytest.mark.parametrize(("url", "confined"), [
    ("https://ntfy.sh", False),
    ("http://127.0.0.1:2586", True),
    ("http://100.64.0.9", True),
    ("http://10.0.0.9", False),
])
def test_alert_units_are_kernel_confined_when_ntfy_is_local(
    tmp_path: Path, url: str, confined: bool,
) -> None:
    files = plan_for(tmp_path, ntfy={"url": url})
    for unit in ("mushishi-watchdog.service", "mushishi-alert@.service",
                 "mushishi-sovereignty.service"):
        text = files[str(UNITS / f"{unit}.d/network.conf")]
        assert ("\nIPAddressDeny=any\n" in text) is confined, text
        if confined:
            assert "IPAddressAllow=100.64.0.0/10" in text
        else:
            assert "Relaxation: ntfy.url is not local" in text


@pytest.mark.parametrize(("repository", "confined"), [
    ("/data/ai/09-restic-repo", True),
    ("local:/srv/restic", True),
    ("sftp:backup@192.0.2.10:/srv/restic", True),     # confined to its host (see
    ("s3:192.0.2.11/bucket", True),                   # test_install_backup.py)
    ("b2:bucket:/mushishi", False),                   # restic picks b2's hosts itself
])
def test_backup_units_are_kernel_confined_unless_the_repository_has_no_one_host(
    tmp_path: Path, repository: str, confined: bool,
) -> None:
    files = plan_for(tmp_path, backup={"repository": repository})
    for unit in ("mushishi-backup.service", "mushishi-backup-check.service"):
        text = files[str(UNITS / f"{unit}.d/network.conf")]
        assert ("IPAddressDeny=any\nIPAddressAllow=localhost" in text) is confined, text
        if not confined:
            assert "Relaxation: backup.repository (b2:) has no one host" in text


def test_every_moved_state_directory_is_writable_by_its_units(tmp_path: Path) -> None:
    """ProtectSystem=strict leaves only the units' own StateDirectory= writable: a state
    directory the config moves elsewhere gets ReadWritePaths= in each unit that writes it,
    and install creates it (except node_exporter's textfile directory, not ours)."""
    files = plan_for(tmp_path, router={"state_dir": "/srv/m/router"},
                     watchdog={"state_dir": "/srv/m/watchdog"},
                     backup={"state_dir": "/srv/m/backup", "cache_dir": "/srv/m/cache"},
                     firewall={"state_dir": "/srv/m/firewall", "textfile_dir": "/srv/m/prom"})
    def state(unit: str) -> str:
        return files[str(UNITS / f"{unit}.d/state.conf")]
    assert "ReadWritePaths=/srv/m/router" in state("mushishi-router.service")
    for unit in ("mushishi-watchdog.service", "mushishi-alert@.service",
                 "mushishi-sovereignty.service"):
        assert "ReadWritePaths=/srv/m/watchdog" in state(unit)
    for unit in ("mushishi-backup.service", "mushishi-backup-check.service"):
        assert "ReadWritePaths=/srv/m/backup" in state(unit)
        assert "ReadWritePaths=/srv/m/cache" in state(unit)
    firewall = state("mushishi-firewall.service")
    assert "ReadWritePaths=/srv/m/firewall" in firewall
    assert "ReadWritePaths=-/srv/m/prom" in firewall
    tmpfiles = files["etc/tmpfiles.d/mushishi.conf"]
    for line in ("d /srv/m/router 0700 mushishi mushishi -",
                 "d /srv/m/watchdog 0755 mushishi mushishi -",
                 "d /srv/m/backup 0755 root mushishi -", "d /srv/m/cache 0700 root root -",
                 "d /srv/m/firewall 0750 root root -"):
        assert line in tmpfiles
    assert "/srv/m/prom" not in tmpfiles
    default = plan_for(tmp_path)
    assert not [name for name in default if name.endswith("/state.conf")]
