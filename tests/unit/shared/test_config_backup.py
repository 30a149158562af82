"""`[[backup.copies]]`: every mistake is an error naming its key; repository strings read as
restic reads them (host, sftp user and port), shown without a password."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from mushishi.shared.config.backup import (
    SftpLocation,
    display_repository,
    repository_host,
    sftp_location,
)
from tests.paths import BINDIR
from tests.unit.shared.config_issues import MINIMAL, config_issues

SFTP = "sftp:backup@offsite.example:/srv/restic/mushishi"


def copies(tmp_path: Path, copy: str, backup: str = "") -> list[str]:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("offsite.example ssh-ed25519 AAAA\n")
    text = (MINIMAL + f'[backup]\nrepository = "/data/repo"\n{backup}\n[[backup.copies]]\n'
            + copy.replace("KNOWN_HOSTS", str(known_hosts)))
    return config_issues(tmp_path, text)


def test_a_complete_sftp_copy_is_valid(tmp_path: Path) -> None:
    assert copies(tmp_path, f'repository = "{SFTP}"\nknown_hosts = "KNOWN_HOSTS"\n'
                  'ssh_key_credential = "restic-copy-ssh-key"\n'
                  'password_credential = "restic-copy-password"\nkeep_monthly = 12\n') == []


@pytest.mark.parametrize(("copy", "backup", "expected"), [
    ('repository = "/data/repo/"', "",
     "backup.copies[0].repository: is backup.repository itself: a copy must live elsewhere "
     "(off the box)"),
    ('repository = "local:/data/repo"', "",
     "backup.copies[0].repository: is backup.repository itself"),
    (f'repository = "{SFTP}"\nssh_key_credential = "k"', "",
     "backup.copies[0].known_hosts: required for an sftp: repository: a known_hosts file "
     "pinning the host's key"),
    (f'repository = "{SFTP}"\nknown_hosts = "KNOWN_HOSTS"', "",
     "backup.copies[0].ssh_key_credential: required for an sftp: repository"),
    ('repository = "rest:https://backup.example/mushishi"\nknown_hosts = "KNOWN_HOSTS"', "",
     "backup.copies[0].known_hosts: only for an sftp: repository"),
    ('repository = "/mnt/usb/restic"\nkeep_monthly = 2', "",
     "backup.copies[0].keep_monthly: 2 is below backup.keep_monthly (3): every run would "
     "copy again what the copy's retention removed"),
    ('repository = "/mnt/usb/restic"', "keep_daily = 9",
     "backup.copies[0].keep_daily: 7 is below backup.keep_daily (9)"),
    ('repository = "b2:bucket:/mushishi"', "",
     "backup.copies[0].repository: Value error, 'b2:bucket:/mushishi': a copy is sftp:, "
     "rest:, s3: or a path"),
    ('repository = "sftp:offsite.example"', "",
     "backup.copies[0].repository: Value error, 'sftp:offsite.example': expected "
     "sftp:[user@]host:/path"),
    (f'repository = "{SFTP}"\nknown_hosts = "/etc/my known_hosts"\nssh_key_credential = "k"',
     "", "backup.copies[0].known_hosts: Value error, '/etc/my known_hosts': ssh's option line "
     "takes no spaces or quotes here"),
    (f'repository = "{SFTP}"\nknown_hosts = "KNOWN_HOSTS"\nssh_key_credential = "k"',
     'repository = "sftp:nas:/srv/restic"',
     "backup.copies[0].repository: restic 0.14 gives both repositories of `restic copy` one "
     "sftp.command"),
    ('repository = "/mnt/usb/restic"\nkeep_hourly = 24', "",
     "backup.copies[0].keep_hourly: unknown key"),
])
def test_a_copy_mistake_is_an_error_naming_its_key(tmp_path: Path, copy: str, backup: str,
                                                   expected: str) -> None:
    if backup.startswith("repository"):
        text = (MINIMAL + f"[backup]\n{backup}\n[[backup.copies]]\n"
                + copy.replace("KNOWN_HOSTS", str(tmp_path / "kh")))
        (tmp_path / "kh").write_text("x\n")
        found = config_issues(tmp_path, text)
    else:
        found = copies(tmp_path, copy, backup)
    assert any(issue.startswith(expected) for issue in found), found


def test_two_copies_of_one_repository_are_an_error(tmp_path: Path) -> None:
    found = copies(tmp_path, 'repository = "/mnt/a"\n[[backup.copies]]\nrepository = "/mnt/a"')
    assert found == ["backup.copies[1].repository: is also an earlier copy"]


def test_config_check_names_a_known_hosts_file_that_does_not_exist(tmp_path: Path) -> None:
    config = tmp_path / "mushishi.toml"
    config.write_text(MINIMAL + f'[[backup.copies]]\nrepository = "{SFTP}"\n'
                      'known_hosts = "/etc/mushishi/no-such-known-hosts"\n'
                      'ssh_key_credential = "restic-copy-ssh-key"\n')
    # Only `config check` (and the backup, and install) look for the file: the router's
    # start does not depend on a backup's file.
    assert config_issues(tmp_path, config.read_text()) == []
    result = subprocess.run([f"{BINDIR}/mushishi", "config", "check", str(config)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert (f"{config}: backup.copies[0].known_hosts: /etc/mushishi/no-such-known-hosts does "
            "not exist: put the off-box host's key there") in result.stderr


@pytest.mark.parametrize(("repository", "expected"), [
    ("sftp:backup@offsite.example:/srv/restic", SftpLocation("backup", "offsite.example", None)),
    ("sftp:offsite.example:restic", SftpLocation(None, "offsite.example", None)),
    ("sftp:me@corp@nas:/r", SftpLocation("me@corp", "nas", None)),
    ("sftp://backup@offsite.example:2222//srv/restic",
     SftpLocation("backup", "offsite.example", "2222")),
    ("sftp://[2001:db8::2]/restic", SftpLocation(None, "2001:db8::2", None)),
])
def test_sftp_locations_read_as_restic_reads_them(repository: str,
                                                  expected: SftpLocation) -> None:
    assert sftp_location(repository) == expected


@pytest.mark.parametrize(("repository", "host"), [
    ("sftp:backup@offsite.example:/srv/restic", "offsite.example"),
    ("sftp://backup@198.51.100.2:2222//srv/restic", "198.51.100.2"),
    ("rest:https://user:secret@backup.example:8000/mushishi/", "backup.example"),
    ("rest:http://[2001:db8::5]:8000/", "2001:db8::5"),
    ("s3:s3.eu-central-1.amazonaws.com/bucket/mushishi", "s3.eu-central-1.amazonaws.com"),
    ("s3:https://minio.example:9000/bucket", "minio.example"),
    ("/data/ai/09-restic-repo", None),
    ("local:/mnt/usb/restic", None),
    ("b2:bucket:/mushishi", None),
])
def test_the_one_host_of_a_repository(repository: str, host: str | None) -> None:
    assert repository_host(repository) == host


def test_a_password_in_a_repository_url_is_never_shown() -> None:
    assert display_repository("rest:https://mushishi:s3cret@backup.example:8000/box/") == \
        "rest:https://mushishi:***@backup.example:8000/box/"
    assert display_repository(SFTP) == SFTP
    assert display_repository("/data/repo") == "/data/repo"


def test_config_check_lists_the_copies_credentials(tmp_path: Path) -> None:
    config = tmp_path / "mushishi.toml"
    config.write_text(MINIMAL + '[[backup.copies]]\nrepository = "/mnt/usb/restic"\n'
                      'password_credential = "restic-copy-password"\n')
    result = subprocess.run([f"{BINDIR}/mushishi", "config", "check", str(config)],
                            capture_output=True, text=True, check=True,
                            env={"PATH": "/usr/bin:/bin"})
    assert re.search(r'^backup\.copies\[0\]\.password_credential +\= "restic-copy-password"'
                     r"  # missing \(LoadCredential=restic-copy-password:",
                     result.stdout, re.MULTILINE), result.stdout
