"""restic command lines, exit classes and output parsers (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mushishi.services.backup.process import redact
from mushishi.services.backup.restic import (
    ExitClass,
    LockInfo,
    Restic,
    classify,
    escape_pattern,
    is_stale,
    local_repository_path,
    parse_backup,
    parse_forget,
    parse_forget_kept,
    parse_ls_node,
    parse_progress,
)

RESTIC = Restic("/usr/bin/restic", "/srv/repo", "/run/credentials/x/restic-password",
                "/var/cache/mushishi/restic")


def test_every_command_starts_with_the_absolute_binary_and_explicit_repository() -> None:
    commands = [RESTIC.init(), RESTIC.list_locks(), RESTIC.cat_lock("ab"),
                RESTIC.unlock(), RESTIC.backup(["/a"]), RESTIC.snapshots(), RESTIC.ls("id"),
                RESTIC.forget_prune(keep_daily=7, keep_weekly=4, keep_monthly=3),
                RESTIC.restore("id", "/tmp/x", ["/a"]), RESTIC.check("5%")]
    for argv in commands:
        assert argv[:3] == ["/usr/bin/restic", "--repo", "/srv/repo"]
        assert argv[3:5] == ["--password-file", "/run/credentials/x/restic-password"]


def test_password_from_environment_puts_nothing_secret_in_argv() -> None:
    argv = Restic("/usr/bin/restic", "/srv/repo").backup(["/a"])
    assert "--password-file" not in argv and "--no-cache" in argv


def test_backup_argv_has_tags_excludes_and_ends_options_before_paths() -> None:
    argv = RESTIC.backup(["/data/-odd"], excludes=["/data/x/pgdata", "*.tmp"],
                         tags=["mushishi", "weekly"],
                         time=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    tail = argv[argv.index("backup"):]
    assert tail == ["backup", "--tag", "mushishi", "--tag", "weekly", "--exclude",
                    "/data/x/pgdata", "--exclude", "*.tmp", "--time", "2026-01-02 03:04:05",
                    "--", "/data/-odd"]
    assert "--json" in argv and "--cache-dir" in argv


def test_forget_applies_7_4_3_with_prune_to_tagged_snapshots_only() -> None:
    argv = RESTIC.forget_prune(keep_daily=7, keep_weekly=4, keep_monthly=3,
                               tags=["mushishi", "b"])
    tail = argv[argv.index("forget"):]
    assert tail == ["forget", "--prune", "--keep-daily", "7", "--keep-weekly", "4",
                    "--keep-monthly", "3", "--tag", "mushishi,b"]


def test_reads_never_lock_and_restore_reads_the_repository_not_the_cache() -> None:
    assert "--no-lock" in RESTIC.snapshots() and "--no-cache" in RESTIC.snapshots()
    assert "--no-lock" in RESTIC.list_locks()
    restore = RESTIC.restore("abc", "/tmp/t", ["/a/b[1]*.txt"])
    assert "--no-cache" in restore
    assert restore[-2:] == ["--include", r"/a/b\[1\]\*.txt"]
    assert "--remove-all" not in RESTIC.unlock()


def test_check_reads_a_data_subset() -> None:
    assert RESTIC.check("5%")[-2:] == ["check", "--read-data-subset=5%"]
    assert RESTIC.check("")[-1] == "check"


def test_upload_limit_is_passed_when_configured() -> None:
    argv = Restic("/r", "/repo", limit_upload_kib=512).backup(["/a"])
    assert argv[argv.index("--limit-upload") + 1] == "512"


@pytest.mark.parametrize(("code", "stderr", "expected"), [
    (0, "", ExitClass.OK),
    (3, "Warning: at least one source file could not be read", ExitClass.PARTIAL),
    (1, "Fatal: unable to open config file: stat /r/config: no such file or directory\n"
        "Is there a repository at the following location?", ExitClass.REPO_MISSING),
    (10, "", ExitClass.REPO_MISSING),
    (1, "Fatal: wrong password or no key found", ExitClass.WRONG_PASSWORD),
    (12, "", ExitClass.WRONG_PASSWORD),
    (1, "unable to create lock in backend: repository is already locked exclusively by PID",
     ExitClass.LOCKED),
    (11, "", ExitClass.LOCKED),
    (130, "signal interrupt received, cleaning up", ExitClass.INTERRUPTED),
    (-9, "", ExitClass.INTERRUPTED),
    (1, "Fatal: something else", ExitClass.FATAL),
    (2, "", ExitClass.FATAL),
])
def test_exit_classes(code: int, stderr: str, expected: ExitClass) -> None:
    assert classify(code, stderr) is expected


def test_exit_3_is_partial_never_ok() -> None:
    assert classify(3) is not ExitClass.OK


def test_backup_output_summary_and_unreadable_files() -> None:
    stdout = (
        '{"message_type":"status","percent_done":0.5,"total_files":2,"bytes_done":1,'
        '"total_bytes":2}\n'
        '{"message_type":"summary","files_new":2,"files_changed":1,"files_unmodified":4,'
        '"data_added":2001124,"total_files_processed":7,"total_bytes_processed":2000003,'
        '"snapshot_id":"675cf18f"}\n')
    stderr = ('{"message_type":"error","error":{"Op":"open","Path":"/s/secret","Err":13},'
              '"during":"archival","item":"/s/secret"}\n'
              "Warning: at least one source file could not be read\n")
    summary = parse_backup(stdout, stderr)
    assert summary.snapshot_id == "675cf18f"
    assert (summary.files_new, summary.files_changed, summary.bytes_added) == (2, 1, 2001124)
    assert summary.unreadable == ["/s/secret: Permission denied"]
    assert parse_progress(stdout.splitlines()[0]) == (0.5, 1, 2)
    assert parse_progress("not json") is None


def test_ls_node_only_regular_files() -> None:
    file_line = ('{"name":"a.bin","type":"file","path":"/src/a.bin","size":2000000,'
                 '"mtime":"2026-11-28T08:42:44.317835385Z","struct_type":"node"}')
    node = parse_ls_node(file_line)
    assert node is not None and node.path == "/src/a.bin" and node.size == 2000000
    assert parse_ls_node(file_line.replace('"type":"file"', '"type":"dir"')) is None
    assert parse_ls_node('{"time":"x","struct_type":"snapshot"}') is None


def test_forget_json_counts_kept_and_removed_and_ignores_prune_text() -> None:
    stdout = ('[{"keep":[{"id":"a"},{"id":"b"}],"remove":[{"id":"c"}]},'
              '{"keep":[{"id":"d"}],"remove":null}]\nloading indexes...\ndone\n')
    assert parse_forget(stdout) == (3, 1)


def test_forget_json_lists_the_snapshots_left_with_where_a_copy_came_from() -> None:
    # restic 0.14's `--json forget --prune` on a copy repository (first line), then prune.
    stdout = (
        '[{"tags":["mushishi"],"host":"vm","paths":["/data"],"keep":[{"time":'
        '"2026-12-03T12:36:39.096329991Z","tree":"569e3c38","paths":["/data"],"hostname":'
        '"vm","username":"root","tags":["mushishi"],"original":"e5745778327fc961","id":'
        '"4e5649f76d5639cf","short_id":"4e5649f7"}],"remove":[{"time":'
        '"2026-11-01T00:00:00Z","tree":"aa","paths":["/data"],"hostname":"vm","id":"0b","short_id":'
        '"0b"}],"reasons":[]}]\n1 snapshots have been removed, running prune\n')
    [left] = parse_forget_kept(stdout)
    assert (left.short_id, left.original, left.paths) == ("4e5649f7", "e5745778327fc961",
                                                          ("/data",))
    assert left.time == datetime(2026, 12, 3, 12, 36, 39, 96329, tzinfo=UTC)
    # restic prints nothing with no keep policy (or no snapshot of the tags): no listing.
    for unknown in ("", "\n", '{"message":"something else"}\n'):
        with pytest.raises(ValueError):
            parse_forget_kept(unknown)


NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("lock", "alive", "stale"), [
    (LockInfo("l", NOW - timedelta(minutes=1), False, "box", 42), False, True),
    (LockInfo("l", NOW - timedelta(minutes=1), False, "box", 42), True, False),
    (LockInfo("l", NOW - timedelta(minutes=1), True, "other", 42), False, False),
    (LockInfo("l", NOW - timedelta(minutes=31), True, "other", 42), True, True),
])
def test_stale_lock_rule_matches_restic(lock: LockInfo, alive: bool, stale: bool) -> None:
    assert is_stale(lock, now=NOW, hostname="box", pid_alive=lambda pid: alive) is stale


def test_local_repository_detection() -> None:
    assert local_repository_path("/data/repo") == "/data/repo"
    assert local_repository_path("local:/data/repo") == "/data/repo"
    assert local_repository_path("sftp:host:/repo") is None
    assert local_repository_path("rest:https://h/") is None


def test_escape_pattern_makes_metacharacters_literal() -> None:
    assert escape_pattern("/a/*?[x]\\") == "/a/\\*\\?\\[x\\]\\\\"


def test_redact_hides_every_secret() -> None:
    assert redact("pw=s3cret and s3cret again", ["s3cret", ""]) == \
        "pw=<redacted> and <redacted> again"
