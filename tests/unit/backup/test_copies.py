"""Off-box copies, the pure parts: restic's copy command lines and the ssh line for sftp:,
what restic's output says was copied, a copy's outcome and record, the run's outcome, and
the pinned hosts."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mushishi.services.backup import core
from mushishi.services.backup.core import CopyResult, Outcome, SetResult, VerifyResult
from mushishi.services.backup.network import check_host, format_pins, parse_pins, resolve_hosts
from mushishi.services.backup.process import Processes
from mushishi.services.backup.repository import Access
from mushishi.services.backup.restic import (
    Restic,
    first_error_line,
    newest_containing,
    parse_copy,
    parse_snapshots,
    sftp_command,
)

PRIMARY = Restic("/usr/bin/restic", "/data/repo", "/run/credentials/u/restic-password",
                 "/var/cache/mushishi/restic")
COPY = Restic("/usr/bin/restic", "sftp:backup@offsite.example:/srv/restic", "/run/c/pw",
              "/var/cache/mushishi/restic", 512, ("sftp.command=ssh -s sftp",))
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def test_copy_reads_the_primary_and_writes_the_copy_with_its_own_password() -> None:
    argv = COPY.copy_from(PRIMARY, tags=["mushishi", "box"])
    assert argv[:3] == ["/usr/bin/restic", "--repo", "sftp:backup@offsite.example:/srv/restic"]
    assert argv[3:5] == ["--password-file", "/run/c/pw"]
    assert argv[argv.index("--limit-upload"):][:2] == ["--limit-upload", "512"]
    assert argv[argv.index("-o"):][:2] == ["-o", "sftp.command=ssh -s sftp"]
    assert argv[argv.index("copy"):] == [
        "copy", "--from-repo", "/data/repo", "--from-password-file",
        "/run/credentials/u/restic-password", "--tag", "mushishi,box"]


def test_a_primary_password_from_the_environment_stays_out_of_argv() -> None:
    argv = COPY.copy_from(Restic("/usr/bin/restic", "/data/repo"))
    assert "--from-password-file" not in argv     # restic reads RESTIC_FROM_PASSWORD
    assert argv[-2:] == ["--from-repo", "/data/repo"]


def test_a_copy_is_created_with_the_primarys_chunker_parameters() -> None:
    argv = COPY.init_copy_of(PRIMARY)
    assert "--no-cache" in argv
    assert argv[argv.index("init"):] == [
        "init", "--copy-chunker-params", "--from-repo", "/data/repo", "--from-password-file",
        "/run/credentials/u/restic-password"]


def test_the_ssh_line_pins_the_host_key_to_one_file_and_never_prompts() -> None:
    line = sftp_command("/usr/bin/ssh", "backup", "offsite.example", "2222",
                        known_hosts="/etc/mushishi/known_hosts",
                        identity_file="/run/credentials/mushishi-backup.service/key")
    words = line.split(" ")
    assert words[:3] == ["/usr/bin/ssh", "-F", "/dev/null"]
    options = {words[i + 1] for i, word in enumerate(words) if word == "-o"}
    assert {"BatchMode=yes", "StrictHostKeyChecking=yes", "GlobalKnownHostsFile=/dev/null",
            "UserKnownHostsFile=/etc/mushishi/known_hosts", "IdentitiesOnly=yes",
            "UpdateHostKeys=no", "ServerAliveInterval=15"} <= options
    assert words[-7:] == ["-p", "2222", "-l", "backup", "offsite.example", "-s", "sftp"]
    assert words[words.index("-i") + 1] == "/run/credentials/mushishi-backup.service/key"
    plain = sftp_command("/usr/bin/ssh", None, "198.51.100.2", None, known_hosts="/k",
                         identity_file="/i", log_file="/var/lib/mushishi/backup/ssh-copy0.log")
    assert plain.endswith(" -E /var/lib/mushishi/backup/ssh-copy0.log 198.51.100.2 -s sftp")
    assert " -l " not in plain


COPY_OUTPUT = """
snapshot 0f6861df of [/data/a] at 2026-12-02 13:49:36.76 +0000 UTC)
skipping source snapshot 0f6861df, was already copied to snapshot da3b4905

snapshot 1a2b3c4d of [/data/a] at 2026-12-03 13:49:36.76 +0000 UTC)
  copy started, this may take a while...
[0:00] 100.00%  2 / 2 packs copied

snapshot 9e8f7a6b saved

snapshot 5c5c5c5c of [/data/b] at 2026-12-03 13:50:00 +0000 UTC)
  copy started, this may take a while...

snapshot 77777777 saved
"""


def test_parse_copy_lists_the_source_snapshots_copied_not_those_skipped() -> None:
    assert parse_copy(COPY_OUTPUT) == ["1a2b3c4d", "5c5c5c5c"]
    assert parse_copy("") == []


def test_snapshots_carry_where_a_copy_came_from_and_what_it_holds() -> None:
    text = json.dumps([
        {"time": "2026-12-01T10:00:00.123456789Z", "paths": ["/data/a"], "id": "aa" * 32,
         "short_id": "aaaaaaaa", "original": "0f6861df" + "0" * 56},
        {"time": "2026-12-02T10:00:00+01:00", "paths": ["/data/b"], "id": "bb" * 32,
         "short_id": "bbbbbbbb"}])
    first, second = parse_snapshots(text)
    assert first.original is not None and first.original.startswith("0f6861df")
    assert second.original is None and second.paths == ("/data/b",)
    assert newest_containing([first, second], "/data/a/reports/x.md") == first
    assert newest_containing([first, second], "/data/b") == second
    assert newest_containing([first, second], "/data/ab") is None


def test_this_runs_snapshots_missing_from_the_copy_are_named() -> None:
    originals = ["0f6861df" + "0" * 56, None, "1a2b3c4d" + "1" * 56]
    assert core.missing_from_copy(["0f6861df", "1a2b3c4d"], originals) == []
    assert core.missing_from_copy(["0f6861df", "deadbeef"], originals) == ["deadbeef"]


@pytest.mark.parametrize(("result", "interrupted", "outcome"), [
    (CopyResult("r", verify=VerifyResult(outcome="ok")), False, "ok"),
    (CopyResult("r", verify=VerifyResult(outcome="ok")), True, "interrupted"),
    (CopyResult("r", error="restic copy exited 1"), False, "failed"),
    (CopyResult("r", verify=VerifyResult(outcome="failed")), False, "failed"),
    (CopyResult("r", verify=VerifyResult(outcome="inconclusive")), False, "warning"),
    (CopyResult("r", verify=VerifyResult(outcome="ok"), warnings=["cleared stale lock"]),
     False, "warning"),
    (CopyResult("r", verify=VerifyResult(outcome="ok"),
                retention=core.RetentionResult(ran=True, error="locked")), False, "warning"),
])
def test_copy_outcome(result: CopyResult, interrupted: bool, outcome: str) -> None:
    assert core.copy_outcome(result, interrupted=interrupted) == outcome


OK_SET = [SetResult("/data/a", "reports", "ok", "0f6861df")]


@pytest.mark.parametrize(("sets", "copies", "outcome", "status"), [
    (OK_SET, ["ok", "warning"], Outcome.OK, 0),
    (OK_SET, ["ok", "failed"], Outcome.COPY_FAILED, 4),
    (OK_SET, ["skipped"], Outcome.OK, 0),
    ([SetResult("/data/a", "reports", "partial", "0f6861df")], ["failed"], Outcome.PARTIAL, 3),
    ([SetResult("/data/a", "reports", "failed")], ["skipped"], Outcome.FAILED, 1),
])
def test_a_failed_copy_is_never_hidden_behind_the_primarys_success(
        sets: list[SetResult], copies: list[str], outcome: Outcome, status: int) -> None:
    found = core.overall_outcome(sets, fatal=None, interrupted=False, warnings=[],
                                 copies=copies)
    assert found is outcome
    assert core.exit_code(found, VerifyResult(outcome="ok"), signal_number=None) == status


def test_a_failed_primary_verification_outranks_a_failed_copy() -> None:
    assert core.exit_code(Outcome.COPY_FAILED, VerifyResult(outcome="failed"),
                          signal_number=None) == 2


def test_copy_record_carries_what_an_unreachable_copy_cannot_tell() -> None:
    earlier = core.copy_record(
        CopyResult("sftp:b@h:/r", "ok", ["9e8f7a6b"], ["1a2b3c4d"],
                   (NOW - timedelta(hours=1)).isoformat(), verify=VerifyResult(outcome="ok")),
        finished=NOW, previous=None)
    assert earlier["verified"] is True and earlier["snapshot_age_s"] == 3600
    assert earlier["last_success_time"] == earlier["last_verified_time"] == NOW.isoformat()
    assert earlier["snapshots_copied"] == 1 and earlier["copied_from"] == ["1a2b3c4d"]
    later = NOW + timedelta(days=2)
    record = core.copy_record(CopyResult("sftp:b@h:/r", "failed", error="restic copy exited 1"),
                              finished=later, previous=earlier)
    assert record["outcome"] == "failed" and record["verified"] is False
    assert record["newest_snapshot_time"] == earlier["newest_snapshot_time"]
    assert record["snapshot_age_s"] == 3600 + 2 * 86400
    assert record["last_success_time"] == record["last_verified_time"] == NOW.isoformat()
    never = core.copy_record(CopyResult("/mnt/usb", "failed", error="x"), finished=NOW,
                             previous=None)
    assert never["snapshot_age_s"] is None and never["last_success_time"] is None


def test_only_the_primarys_success_moves_last_success_time() -> None:
    record = core.result_record(
        started=NOW, finished=NOW, outcome=Outcome.COPY_FAILED, repository="/data/repo",
        sets=OK_SET, warnings=[], errors=["backup.copies[0]: restic copy exited 1"],
        retention=core.RetentionResult(), verify=VerifyResult(outcome="ok"),
        stale_locks_cleared=[], previous=None, exit_status=4, copies=[{"repository": "x"}])
    assert record["last_success_time"] == NOW.isoformat()
    assert record["copies"] == [{"repository": "x"}]


# -- pinned hosts ----------------------------------------------------------------------


def resolver(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    def resolve(host: str) -> list[str]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]
    return resolve


def test_pins_round_trip_through_the_units_environment() -> None:
    text = format_pins({"offsite.example": ["198.51.100.2", "2001:db8::2"],
                        "198.51.100.9": ["198.51.100.9"], "gone.example": []})
    assert text == ("198.51.100.9=198.51.100.9 gone.example= "
                    "offsite.example=198.51.100.2,2001:db8::2")
    assert parse_pins(text) == {"198.51.100.9": {"198.51.100.9"}, "gone.example": set(),
                                "offsite.example": {"198.51.100.2", "2001:db8::2"}}
    with pytest.raises(ValueError, match="is not host=address"):
        parse_pins("offsite.example")


def test_install_resolves_each_host_once_and_says_which_did_not() -> None:
    found, failed = resolve_hosts(
        ["offsite.example", "198.51.100.9", "offsite.example", "nowhere.example"],
        resolver({"offsite.example": ["::ffff:198.51.100.2", "198.51.100.2"]}))
    assert found == {"offsite.example": ["198.51.100.2"], "198.51.100.9": ["198.51.100.9"]}
    assert failed == {"nowhere.example": "Name or service not known"}


PINS = {"offsite.example": frozenset({"198.51.100.2"}),
        "198.51.100.9": frozenset({"198.51.100.9"})}
KEY = "backup.copies[0].repository"


@pytest.mark.parametrize(("host", "pins", "table", "expected"), [
    ("offsite.example", None, {}, None),     # outside the unit: nothing pinned or confined
    ("offsite.example", PINS, {"offsite.example": ["198.51.100.2"]}, None),
    ("198.51.100.9", PINS, {}, None),
    ("offsite.example", PINS, {"offsite.example": ["203.0.113.2"]},
     f"{KEY}: offsite.example now resolves to 203.0.113.2, not 198.51.100.2 as pinned by "
     "`mushishi install`; if the host really moved, check it and run `mushishi install` "
     "again"),
    ("offsite.example", PINS, {"offsite.example": ["198.51.100.2", "198.51.100.3"]},
     f"{KEY}: offsite.example now resolves to 198.51.100.3, not 198.51.100.2"),
    ("offsite.example", PINS, {},
     f"{KEY}: cannot resolve offsite.example (Name or service not known); the backup unit "
     "reaches it only at 198.51.100.2"),
    ("new.example", PINS, {"new.example": ["198.51.100.2"]},
     f"{KEY}: new.example was not pinned by `mushishi install`, so the backup unit cannot "
     "reach it: run `mushishi install` after changing the config"),
    ("198.51.100.10", PINS, {}, f"{KEY}: 198.51.100.10 was not pinned"),
])
def test_a_host_is_reached_only_where_install_pinned_it(
        host: str, pins: dict[str, frozenset[str]] | None, table: dict[str, list[str]],
        expected: str | None) -> None:
    found = check_host(KEY, host, pins, resolver(table))
    if expected is None:
        assert found is None
    else:
        assert found is not None and found.startswith(expected), found
        assert "\n" not in found


def test_the_error_line_says_what_ssh_said(tmp_path: Path) -> None:
    """restic only says EOF; ssh's own words come from its -E log (restic forwards ssh's
    stderr from a goroutine that may lose lines when restic exits first)."""
    log = tmp_path / "ssh-copy0.log"
    log.write_text("@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n"
                   "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n"
                   "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n"
                   "Host key for offsite.example has changed and you have requested strict "
                   "checking.\nHost key verification failed.\n")
    access = Access(COPY, Processes(env={}), log)
    assert access.ssh_said() == " (ssh: Host key verification failed.)"
    log.write_text("@@@@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!   @\n")
    assert access.ssh_said() == " (ssh: WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!)"
    log.write_text("")
    assert access.ssh_said() == ""
    assert Access(PRIMARY, Processes(env={})).ssh_said() == ""
    assert first_error_line("Fatal: wrong password or no key found\n") == \
        "Fatal: wrong password or no key found"
