"""mushishi-backup decisions (pure): sets, outcomes, exit codes, sampling, records."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from mushishi.services.backup import core
from mushishi.services.backup.core import Outcome, SetResult, VerifyResult
from mushishi.services.backup.restic import ExitClass, FileNode
from mushishi.shared.config.backup import BackupSet

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def test_missing_path_is_a_result_with_its_reason_not_a_skip() -> None:
    sets = [BackupSet(path="/data/a", reason="client reports"),
            BackupSet(path="/data/gone", reason="configs")]
    present, missing = core.plan_sets(sets, lambda path: path == "/data/a")
    assert [s.path for s in present] == ["/data/a"]
    assert missing[0].status == "missing"
    assert "/data/gone does not exist" in missing[0].error
    assert "configs" in missing[0].error


def _set(status: str) -> SetResult:
    return SetResult("/p", "r", status)


@pytest.mark.parametrize(("statuses", "fatal", "interrupted", "warnings", "expected"), [
    (["ok", "ok"], None, False, [], Outcome.OK),
    (["ok", "missing"], None, False, [], Outcome.WARNING),
    (["ok"], None, False, ["cleared stale lock"], Outcome.WARNING),
    (["ok", "partial"], None, False, [], Outcome.PARTIAL),
    (["partial", "missing"], None, False, [], Outcome.PARTIAL),
    (["ok", "failed"], None, False, [], Outcome.FAILED),
    (["missing", "missing"], None, False, [], Outcome.FAILED),
    ([], "restic not found", False, [], Outcome.FAILED),
    ([], None, False, [], Outcome.FAILED),
    (["ok", "interrupted"], None, True, [], Outcome.INTERRUPTED),
])
def test_outcome_is_the_worst_part(statuses: list[str], fatal: str | None, interrupted: bool,
                                   warnings: list[str], expected: Outcome) -> None:
    sets = [_set(s) for s in statuses]
    assert core.overall_outcome(sets, fatal=fatal, interrupted=interrupted,
                                warnings=warnings) is expected


def test_set_status_maps_exit_3_to_partial() -> None:
    assert core.set_status(ExitClass.PARTIAL) == "partial"
    assert core.set_status(ExitClass.OK) == "ok"
    assert core.set_status(ExitClass.LOCKED) == "failed"
    assert core.set_status(ExitClass.WRONG_PASSWORD) == "failed"


@pytest.mark.parametrize(("outcome", "verify", "signal_number", "code"), [
    (Outcome.OK, "ok", None, 0),
    (Outcome.WARNING, "ok", None, 0),
    (Outcome.OK, "failed", None, 2),
    (Outcome.OK, "inconclusive", None, 2),
    (Outcome.PARTIAL, "ok", None, 3),
    (Outcome.FAILED, "skipped", None, 1),
    (Outcome.INTERRUPTED, "skipped", 15, 143),
    (Outcome.INTERRUPTED, "skipped", 2, 130),
])
def test_exit_code(outcome: Outcome, verify: str, signal_number: int | None,
                   code: int) -> None:
    assert core.exit_code(outcome, VerifyResult(outcome=verify),
                          signal_number=signal_number) == code


def test_retention_runs_only_when_this_run_wrote_a_snapshot() -> None:
    assert core.should_run_retention([_set("ok")], fatal=None, interrupted=False) is None
    assert core.should_run_retention([_set("partial")], fatal=None, interrupted=False) is None
    assert core.should_run_retention([_set("failed"), _set("missing")], fatal=None,
                                     interrupted=False) == "no snapshot was written in this run"
    assert core.should_run_retention([_set("ok")], fatal=None, interrupted=True)


def _nodes(sizes: list[int]) -> list[FileNode]:
    return [FileNode(f"/f{i:04d}", size, T0) for i, size in enumerate(sizes)]


def test_sample_is_bounded_by_count_and_bytes() -> None:
    nodes = _nodes([100] * 1000 + [10_000_000])
    sample = core.choose_sample(nodes, 20, 1500, random.Random(1))
    assert len(sample) == 15  # 20 chosen, then cut to the 1500-byte budget
    assert all(n.size == 100 for n in sample)
    assert len({n.path for n in sample}) == len(sample)


def test_sample_is_uniform_over_the_whole_listing() -> None:
    nodes = _nodes([1] * 100)
    hits = [0] * 100
    rng = random.Random(7)
    for _ in range(2000):
        for node in core.choose_sample(nodes, 5, 10**6, rng):
            hits[int(node.path[2:])] += 1
    # Expected 100 per file; a sampler biased to the start or end of the stream fails this.
    assert min(hits) > 50 and max(hits) < 160
    assert sum(hits[:50]) == pytest.approx(sum(hits[50:]), rel=0.15)


def test_sample_of_zero_files_is_empty() -> None:
    assert core.choose_sample(_nodes([1, 2]), 0, 100, random.Random(0)) == []


def test_split_sample_spreads_evenly() -> None:
    assert core.split_sample(20, 3) == [7, 7, 6]
    assert core.split_sample(2, 3) == [1, 1, 0]


@pytest.mark.parametrize(("matched", "checked", "mismatches", "restore_failed", "expected"), [
    (3, 3, [], False, "ok"),
    (2, 3, ["x"], False, "failed"),
    (3, 3, [], True, "failed"),
    (0, 3, [], False, "inconclusive"),
    (0, 0, [], False, "skipped"),
])
def test_verify_outcome(matched: int, checked: int, mismatches: list[str],
                        restore_failed: bool, expected: str) -> None:
    result = VerifyResult(files_checked=checked, files_matched=matched, mismatches=mismatches)
    assert core.verify_outcome(result, restore_failed=restore_failed) == expected


def test_result_record_carries_last_success_through_a_failure() -> None:
    ok = core.result_record(
        started=T0, finished=T0 + timedelta(seconds=5), outcome=Outcome.OK, repository="/r",
        sets=[SetResult("/a", "r", "ok", "abcd1234", 3, 1, 4096)], warnings=[], errors=[],
        retention=core.RetentionResult(ran=True, kept=2), verify=VerifyResult(outcome="ok"),
        stale_locks_cleared=[], previous=None, exit_status=0)
    assert ok["snapshot_ids"] == ["abcd1234"]
    assert (ok["files_new"], ok["bytes_added"], ok["duration_s"]) == (3, 4096, 5.0)
    assert ok["last_success_time"] == (T0 + timedelta(seconds=5)).isoformat()
    failed = core.result_record(
        started=T0 + timedelta(days=7), finished=T0 + timedelta(days=7), outcome=Outcome.FAILED,
        repository="/r", sets=[], warnings=[], errors=["boom"],
        retention=core.RetentionResult(), verify=VerifyResult(), stale_locks_cleared=[],
        previous=ok, exit_status=1)
    assert failed["outcome"] == "failed"
    assert failed["last_success_time"] == ok["last_success_time"]
