"""An off-box copy over sftp, in a real booted systemd, against Debian's real sshd.

The box is the sandbox; the off-box host is a network namespace inside it at 198.51.100.2
(tests/system/offsite.py) serving sftp as Debian's `backup` user, its host key pinned in the
known_hosts file the config names. A second host, 203.0.113.2, is an address the backup unit
must never reach. The backup, check and watchdog units are the shipped ones, installed by
`mushishi install` (which pins the copy host's address in the backup units); restic, ssh and
sshd are real. The config uses the very names docs/backup.md prints, so its restore
commands run here as printed.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import tomlkit

from devtools.sandbox import SANDBOX_PATH, Sandbox
from tests.paths import BINDIR, EXAMPLE_CONFIG, REPO
from tests.system.offsite import ELSEWHERE, OFFSITE, OffsiteHosts

REPOSITORY = "sftp:backup@offsite.example:/srv/restic/mushishi"
REMOTE_DIR = "/srv/restic/mushishi"
KNOWN_HOSTS = "/etc/mushishi/known_hosts"
PASSWORD = "the box's own restic password, long enough"
COPY_PASSWORD = "the off-box copy's restic password, another one"
HOSTS = "127.0.0.1 localhost\n{address} offsite.example\n"
STATE = "/var/lib/mushishi/backup"
PROBE = f"{STATE}/probe.json"


def config_text() -> str:
    document: Any = tomlkit.parse(EXAMPLE_CONFIG.read_text())
    document["gpu"]["probe"] = "simulated"
    document["ntfy"]["url"] = "http://127.0.0.1:9"   # local: the watchdog stays confined
    document["watchdog"]["disk_mounts"] = ["/"]
    backup = document["backup"]
    backup["repository"] = "/var/lib/mushishi/restic-repo"
    backup["check_read_data_subset"] = "100%"
    sets = tomlkit.aot()
    item = tomlkit.table()
    item["path"], item["reason"] = "/data/ai/07-outputs", "client deliverables"
    sets.append(item)
    backup["sets"] = sets
    copies = tomlkit.aot()
    copy = tomlkit.table()
    copy["repository"] = REPOSITORY
    copy["password_credential"] = "restic-copy-password"
    copy["known_hosts"] = KNOWN_HOSTS
    copy["ssh_key_credential"] = "restic-copy-ssh-key"
    copy["keep_daily"], copy["keep_weekly"], copy["keep_monthly"] = 7, 4, 12
    copies.append(copy)
    backup["copies"] = copies
    return tomlkit.dumps(document)


class Box:
    """The sandbox with its off-box hosts."""

    def __init__(self, sandbox: Sandbox, hosts: OffsiteHosts) -> None:
        self.sandbox = sandbox
        self.hosts = hosts

    def json(self, inside: str) -> dict[str, Any]:
        return json.loads(self.sandbox.path(inside).read_text())

    def last(self) -> dict[str, Any]:
        return self.json(f"{STATE}/last.json")

    def backup(self, *, expect_status: int = 0) -> dict[str, Any]:
        """Run mushishi-backup.service to its end; its last.json."""
        self.sandbox.systemctl("start", "mushishi-backup.service", timeout=600,
                               check=expect_status == 0)
        shown = self.sandbox.systemctl("show", "mushishi-backup.service", "-p",
                                       "ExecMainStatus", "--value").stdout.strip()
        last = self.last()
        assert int(shown) == expect_status, last
        self.sandbox.systemctl("reset-failed", "mushishi-backup.service", check=False)
        return last

    def set_hosts(self, address: str) -> None:
        self.sandbox.write("/etc/hosts", HOSTS.format(address=address))

    def edit_copy(self, **keys: Any) -> None:
        path = "/etc/mushishi/mushishi.toml"
        document: Any = tomlkit.parse(self.sandbox.path(path).read_text())
        copy = document["backup"]["copies"][0]
        for key, value in keys.items():
            if value is None:
                copy.pop(key, None)
            else:
                copy[key] = value
        self.sandbox.write(path, tomlkit.dumps(document))

    def copy_restic(self, *args: str) -> str:
        """restic on the copy's files as the off-box host holds them (not over sftp): the
        test's independent oracle."""
        result = self.sandbox.run(["restic", "--repo", REMOTE_DIR, "--no-cache", *args],
                                  env={"RESTIC_PASSWORD": COPY_PASSWORD}, timeout=300)
        return result.stdout

    def copy_snapshots(self) -> list[dict[str, Any]]:
        return json.loads(self.copy_restic("--no-lock", "--json", "snapshots"))


@pytest.fixture(scope="module")
def box() -> Iterator[Box]:
    sandbox = Sandbox()
    sandbox.boot()
    try:
        hosts = OffsiteHosts(sandbox)
        hosts.build(REMOTE_DIR)
        box = Box(sandbox, hosts)
        box.set_hosts(OFFSITE.address)
        sandbox.write(KNOWN_HOSTS, hosts.known_hosts_line("offsite.example", OFFSITE))
        sandbox.run(["mkdir", "-p", "/data/ai/07-outputs/reports"])
        sandbox.run(["dd", "if=/dev/urandom", "of=/data/ai/07-outputs/reports/report.bin",
                     "bs=64k", "count=4", "status=none"])
        sandbox.write("/data/ai/07-outputs/reports/summary.md", "# findings\n")
        sandbox.install(config_text(), credentials={
            "restic-password": PASSWORD, "restic-copy-password": COPY_PASSWORD,
            "restic-copy-ssh-key": hosts.private_key(), "ntfy-topic": "mushishi-copies-test"})
        yield box
    finally:
        sandbox.stop()


def restore_commands() -> list[str]:
    """The `sh` lines of docs/backup.md's "Restoring" section, as printed."""
    text = (REPO / "docs" / "backup.md").read_text()
    section = text.split("\n## Restoring\n", 1)[1].split("\n## ", 1)[0]
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.DOTALL):
        joined = block.replace("\\\n", " ")
        lines += [" ".join(line.split()) for line in joined.splitlines()
                  if line.strip() and not line.strip().startswith("#")]
    return lines


def test_install_pins_the_copy_host_and_nothing_else(box: Box) -> None:
    for unit in ("mushishi-backup.service", "mushishi-backup-check.service"):
        text = box.sandbox.path(f"/etc/systemd/system/{unit}.d/network.conf").read_text()
        allowed = re.findall(r"^IPAddressAllow=(.*)$", text, re.MULTILINE)
        assert "IPAddressDeny=any" in text.splitlines()
        assert allowed == ["localhost", OFFSITE.address], text
        assert "backup.copies[0].repository" in text
        shown = box.sandbox.systemctl("show", unit, "-p", "IPAddressAllow",
                                      "--value").stdout
        assert OFFSITE.address in shown and ELSEWHERE.address not in shown


def test_backup_copies_to_the_off_box_host_and_verifies_a_sample_from_it(box: Box) -> None:
    last = box.backup()
    assert last["outcome"] == "ok", last
    [record] = last["copies"]
    assert record["repository"] == REPOSITORY
    assert record["outcome"] == "ok" and record["verified"] is True, record
    assert record["verify"]["files_matched"] >= 2
    assert 0 <= record["snapshot_age_s"] < 600
    # Written over sftp, as the off-box host's `backup` user; the oracle reads it there.
    owner = box.sandbox.run(["stat", "-c", "%U", f"{REMOTE_DIR}/config"]).stdout.strip()
    assert owner == "backup"
    [copied] = box.copy_snapshots()
    assert copied["original"].startswith(last["snapshot_ids"][0])
    metrics = box.sandbox.path(
        "/var/lib/prometheus/node-exporter/mushishi_backup.prom").read_text()
    assert f'mushishi_backup_copy_outcome{{outcome="ok",repository="{REPOSITORY}"}} 1.0' \
        in metrics
    assert f'mushishi_backup_copy_verify_ok{{repository="{REPOSITORY}"}} 1.0' in metrics
    # Neither password nor the SSH key reached a result, a metric or the journal.
    journal = box.sandbox.journal("-u", "mushishi-backup.service")
    key = box.hosts.private_key().splitlines()[1]
    for text in (json.dumps(last), metrics, journal):
        assert PASSWORD not in text and COPY_PASSWORD not in text and key not in text

    # `mushishi status` and the watchdog show the copy's age and its last verification.
    status = box.sandbox.run([f"{BINDIR}/mushishi", "status"], check=False).stdout
    [line] = [row for row in status.splitlines() if row.startswith("copy ")]
    assert REPOSITORY in line and "newest snapshot" in line and "verified" in line, status
    box.sandbox.systemctl("start", "mushishi-watchdog.service", timeout=600)
    checks = {c["name"]: c for c in box.json("/var/lib/mushishi/watchdog/last.json")["checks"]}
    check = checks[f"backup-copy:{REPOSITORY}"]
    assert check["status"] == "ok", check
    assert "newest snapshot" in check["detail"] and "verified" in check["detail"]


def test_the_restore_commands_of_the_docs_work_as_printed_from_either_repository(
        box: Box) -> None:
    commands = restore_commands()
    assert any("--from" in c and REPOSITORY in c for c in commands), commands
    assert any(c.startswith("restic ") and "sftp.command" in c for c in commands), commands
    box.sandbox.run("rm -rf /tmp/restore")
    for command in commands:
        result = box.sandbox.run(command, check=False, timeout=300,
                                 env={"PATH": f"{BINDIR}:{SANDBOX_PATH}"})
        assert result.returncode == 0, f"`{command}`: {result.stdout}{result.stderr}"
    restored = box.sandbox.run(
        "find /tmp/restore -name summary.md -path '*/data/ai/07-outputs/reports/*'").stdout.split()
    # One restored from the box's repository, one from the copy, one by bare restic.
    assert len(restored) == 3, restored
    for path in restored:
        assert box.sandbox.path(path).read_text() == "# findings\n"


def test_the_host_going_away_mid_copy_fails_the_copy_and_the_next_run_catches_up(
        box: Box) -> None:
    sandbox = box.sandbox
    sandbox.run(["dd", "if=/dev/urandom", "of=/data/ai/07-outputs/reports/large.bin", "bs=64k",
                 "count=40", "status=none"])
    box.edit_copy(limit_upload_kib=128)   # about 20 s of upload: time to pull the plug
    sandbox.systemctl("start", "--no-block", "mushishi-backup.service")
    deadline = time.monotonic() + 300
    status = ""
    while not status.startswith("copying to") and time.monotonic() < deadline:
        assert sandbox.is_active("mushishi-backup.service") == "activating", status
        status = sandbox.systemctl("show", "mushishi-backup.service", "-p", "StatusText",
                                   "--value").stdout.strip()
        time.sleep(0.2)
    time.sleep(3)   # restic is uploading packs
    box.hosts.stop(OFFSITE)
    sandbox.wait_for("mushishi-backup.service", "failed", timeout=600)
    assert sandbox.systemctl("show", "mushishi-backup.service", "-p", "ExecMainStatus",
                             "--value").stdout.strip() == "4"
    sandbox.systemctl("reset-failed", "mushishi-backup.service")
    last = box.last()
    assert last["outcome"] == "copy-failed", last
    assert [s["status"] for s in last["sets"]] == ["ok"]   # the box's own backup is fine
    failed_snapshot = last["snapshot_ids"][0]
    [record] = last["copies"]
    assert record["outcome"] == "failed" and record["verified"] is False
    assert "restic copy" in record["error"], record
    assert any(e.startswith("backup.copies[0]") for e in last["errors"]), last["errors"]

    box.hosts.start(OFFSITE)
    box.edit_copy(limit_upload_kib=None)
    last = box.backup()
    assert last["outcome"] in ("ok", "warning"), last
    [record] = last["copies"]
    assert record["outcome"] in ("ok", "warning") and record["verified"] is True, record
    # The snapshot the failed run could not copy went too (before the box's retention
    # forgot it; then the copy's own retention kept one snapshot of the day, as the box's).
    assert sorted(record["copied_from"]) == sorted([failed_snapshot,
                                                    last["snapshot_ids"][0]]), record
    sandbox.systemctl("start", "mushishi-backup-check.service", timeout=600)
    check = box.json(f"{STATE}/check.json")
    assert check["outcome"] == "ok", check
    assert [(c["repository"], c["outcome"]) for c in check["copies"]] == [(REPOSITORY, "ok")]
    # Nothing corrupted, by bare restic on both repositories.
    sandbox.run(["restic", "--repo", "/var/lib/mushishi/restic-repo", "--no-cache",
                 "--password-file", "/etc/mushishi/credentials/restic-password", "check",
                 "--read-data"], timeout=300)
    box.copy_restic("check", "--read-data")


def probe_from_the_backup_unit(sandbox: Sandbox) -> dict[str, Any]:
    dropin = "/etc/systemd/system/mushishi-backup.service.d/zzz-probe.conf"
    sandbox.write(dropin, "[Service]\nExecStart=\nExecStart=/usr/bin/python3 "
                  f"{REPO}/tests/system/reach_probe.py {PROBE} {OFFSITE.address} "
                  f"{ELSEWHERE.address}\n")
    sandbox.systemctl("daemon-reload")
    try:
        sandbox.systemctl("start", "mushishi-backup.service", timeout=120)
    finally:
        sandbox.run(["rm", "-f", dropin])
        sandbox.systemctl("daemon-reload")
    return json.loads(sandbox.path(PROBE).read_text())


def test_the_backup_unit_reaches_the_pinned_host_and_no_other_address(box: Box) -> None:
    sandbox = box.sandbox
    sandbox.run(["/usr/bin/python3", f"{REPO}/tests/system/reach_probe.py", "/tmp/probe.json",
                 OFFSITE.address, ELSEWHERE.address])
    control = json.loads(sandbox.path("/tmp/probe.json").read_text())
    # Unconfined, in the same box, both hosts answer: the routes are there.
    assert control[OFFSITE.address]["tcp"] == control[ELSEWHERE.address]["tcp"] == "SSH"
    confined = probe_from_the_backup_unit(sandbox)
    assert confined[OFFSITE.address] == {"tcp": "SSH", "udp": "sent"}, confined
    assert confined[ELSEWHERE.address] == {"tcp": "timeout", "udp": "EPERM"}, confined


def test_a_copy_host_that_now_resolves_elsewhere_fails_the_copy_naming_the_key(
        box: Box) -> None:
    sandbox = box.sandbox
    box.set_hosts(ELSEWHERE.address)
    try:
        last = box.backup(expect_status=4)
    finally:
        box.set_hosts(OFFSITE.address)
    assert [s["status"] for s in last["sets"]] == ["ok"]
    [record] = last["copies"]
    assert record["outcome"] == "failed"
    assert record["error"].startswith(
        f"backup.copies[0].repository: offsite.example now resolves to {ELSEWHERE.address}, "
        f"not {OFFSITE.address} as pinned by `mushishi install`"), record["error"]
    assert "\n" not in record["error"]
    # Refused before any connection: the other host's sshd saw none.
    assert "Connection from" not in sandbox.journal("-u", ELSEWHERE.unit)


def test_a_host_key_that_does_not_match_the_pinned_one_fails_the_copy(box: Box) -> None:
    sandbox = box.sandbox
    sandbox.write(KNOWN_HOSTS, box.hosts.known_hosts_line("offsite.example", ELSEWHERE))
    try:
        last = box.backup(expect_status=4)
    finally:
        sandbox.write(KNOWN_HOSTS, box.hosts.known_hosts_line("offsite.example", OFFSITE))
    [record] = last["copies"]
    assert record["outcome"] == "failed"
    assert "Host key verification failed" in record["error"], record
    assert box.backup()["copies"][0]["outcome"] in ("ok", "warning")
