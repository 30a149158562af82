"""The watchdog's checks over plain data: ok, problem, or missing-source (never healthy)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mushishi.services.watchdog import checks
from mushishi.services.watchdog.checks import (
    DiskUsage,
    Failed,
    GpuReading,
    Missing,
    Status,
    UnitState,
)

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("snapshots", "status"), [
    ([NOW - timedelta(days=1), NOW - timedelta(days=9)], Status.OK),
    ([NOW - timedelta(days=8, hours=1)], Status.PROBLEM),
    ([], Status.PROBLEM),
    (Failed("restic snapshots exited 1: wrong password"), Status.PROBLEM),
    (Missing("no repository configured"), Status.MISSING_SOURCE),
])
def test_backup_age(snapshots: object, status: Status) -> None:
    result = checks.backup_age(snapshots, now=NOW, max_age_days=8)  # type: ignore[arg-type]
    assert result.name == "backup-age" and result.status is status


def test_backup_age_names_the_limit_key() -> None:
    result = checks.backup_age([NOW - timedelta(days=20)], now=NOW, max_age_days=8)
    assert "20.0 days old" in result.detail
    assert "watchdog.backup_max_age_days" in result.detail


@pytest.mark.parametrize(("outcome", "status"), [
    ("ok", Status.OK), ("warning", Status.PROBLEM), ("partial", Status.PROBLEM),
    ("failed", Status.PROBLEM), ("interrupted", Status.PROBLEM),
])
def test_backup_result_only_ok_is_healthy(outcome: str, status: Status) -> None:
    last = {"outcome": outcome, "finished": "t", "snapshot_ids": ["a"],
            "warnings": ["/data/x does not exist"], "errors": []}
    assert checks.backup_result(last).status is status


def test_backup_result_detail_carries_the_warning() -> None:
    result = checks.backup_result({"outcome": "warning", "warnings": ["/data/x does not exist"]})
    assert "/data/x does not exist" in result.detail


def test_backup_never_ran_is_missing_source_not_ok() -> None:
    result = checks.backup_result(Missing("no backup has run yet"))
    assert result.status is Status.MISSING_SOURCE


@pytest.mark.parametrize(("verify", "status"), [
    ({"outcome": "ok", "files_matched": 3}, Status.OK),
    ({"outcome": "failed", "mismatches": ["/a: SHA-256 differs"]}, Status.PROBLEM),
    ({"outcome": "inconclusive", "error": "every sampled file changed"}, Status.PROBLEM),
    ({"outcome": "skipped", "error": "no snapshot"}, Status.MISSING_SOURCE),
])
def test_restore_verify(verify: dict[str, object], status: Status) -> None:
    assert checks.restore_verify({"verify": verify}).status is status


def test_backup_check() -> None:
    assert checks.backup_check({"outcome": "ok"}).status is Status.OK
    failed = checks.backup_check({"outcome": "failed", "error": "pack abc damaged"})
    assert failed.status is Status.PROBLEM and "pack abc damaged" in failed.detail
    assert checks.backup_check(Missing("not yet")).status is Status.MISSING_SOURCE


GIB = 1 << 30


@pytest.mark.parametrize(("total", "free", "avail", "status"), [
    (100 * GIB, 50 * GIB, 45 * GIB, Status.OK),
    # df's Use% counts root's reserve as unavailable: 85 used / (85 + 9) = 90.4%
    (100 * GIB, 15 * GIB, 9 * GIB, Status.PROBLEM),
    (100 * GIB, 11 * GIB, 11 * GIB, Status.OK),   # 89%
    (100 * GIB, 10 * GIB, 10 * GIB, Status.PROBLEM),  # exactly 90%: "at or above"
])
def test_disk_use_at_or_above_limit(total: int, free: int, avail: int, status: Status) -> None:
    result = checks.disk("/data", DiskUsage(total, free, avail), max_percent=90)
    assert result.name == "disk:/data" and result.status is status


def test_missing_mount_is_a_problem() -> None:
    result = checks.disk("/data", Failed("/data does not exist"), max_percent=90)
    assert result.status is Status.PROBLEM


@pytest.mark.parametrize(("state", "status"), [
    (UnitState("loaded", "active", "running"), Status.OK),
    (UnitState("loaded", "failed", "failed", "exit-code"), Status.PROBLEM),
    (UnitState("loaded", "inactive", "dead", socket_active=True), Status.OK),
    (UnitState("loaded", "inactive", "dead", socket_active=False), Status.PROBLEM),
    (UnitState("loaded", "inactive", "dead"), Status.PROBLEM),
    (UnitState("not-found", "inactive", "dead"), Status.PROBLEM),
    (Failed("cannot connect to the system bus"), Status.PROBLEM),
])
def test_unit_active(state: object, status: Status) -> None:
    result = checks.unit_active("mushishi-router.service", state)  # type: ignore[arg-type]
    assert result.name == "unit:mushishi-router.service" and result.status is status


def test_failed_unit_detail_points_at_its_journal() -> None:
    result = checks.unit_active("mushishi-gpud.service",
                                UnitState("loaded", "failed", "failed", "exit-code"))
    assert "journalctl -u mushishi-gpud.service" in result.detail
    assert "exit-code" in result.detail


ACTIVE = UnitState("loaded", "active", "running")


@pytest.mark.parametrize(("state", "models", "status"), [
    (ACTIVE, ["nemotron-cpu-prism"], Status.OK),
    (ACTIVE, ["model.gguf"], Status.PROBLEM),   # the seed's lesson: file name, not alias
    (ACTIVE, Failed("GET failed: connection refused"), Status.PROBLEM),
    (UnitState("loaded", "activating", "start"), ["nemotron-cpu-prism"], Status.PROBLEM),
])
def test_cpu_floor_ready_means_alias_answers(state: UnitState, models: object,
                                             status: Status) -> None:
    result = checks.cpu_floor("mushishi-cpu-floor.service", state, models,  # type: ignore[arg-type]
                              alias="nemotron-cpu-prism", url="http://127.0.0.1:8001/v1/models")
    assert result.status is status


def _status(shares: dict[str, tuple[float, int]]) -> dict[str, object]:
    return {"cloud_share": {p: {"hour": 0.0, "day": s, "requests_hour": 0, "requests_day": n}
                            for p, (s, n) in shares.items()}}


@pytest.mark.parametrize(("shares", "status"), [
    ({"personal": (0.05, 100), "private": (0.0, 100)}, Status.OK),
    ({"personal": (0.5, 100), "private": (0.0, 100)}, Status.PROBLEM),   # 25% overall
    ({"personal": (0.15, 100), "private": (0.0, 100)}, Status.OK),       # 7.5% overall
    ({"personal": (1.0, 3)}, Status.OK),                                 # too few to judge
])
def test_cloud_share_is_weighted_by_requests(shares: dict[str, tuple[float, int]],
                                             status: Status) -> None:
    result = checks.cloud_share(_status(shares), max_share=0.10, min_requests=20)
    assert result.status is status


def test_cloud_share_names_the_profiles_over_the_limit() -> None:
    result = checks.cloud_share(_status({"personal": (0.5, 100), "private": (0.0, 100)}),
                                max_share=0.10, min_requests=20)
    assert "personal 50% of 100" in result.detail and "25.0%" in result.detail


def test_cloud_share_without_router_is_missing_source() -> None:
    result = checks.cloud_share(Missing("router socket absent"), max_share=0.1, min_requests=1)
    assert result.status is Status.MISSING_SOURCE
    assert checks.cloud_share({"sovereignty": {}}, max_share=0.1,
                              min_requests=1).status is Status.MISSING_SOURCE


@pytest.mark.parametrize(("reading", "status"), [
    (GpuReading(60, False, "ready"), Status.OK),
    (GpuReading(85, False, "ready"), Status.PROBLEM),
    (GpuReading(60, True, "ready"), Status.PROBLEM),
    (GpuReading(60, False, "failed", "tenant vllm-agent did not become ready"), Status.PROBLEM),
    (GpuReading(None, None, "ready"), Status.MISSING_SOURCE),
    (Missing("gpud is not on the system bus"), Status.MISSING_SOURCE),
])
def test_gpu(reading: object, status: Status) -> None:
    result = checks.gpu(reading, max_temperature_c=85)  # type: ignore[arg-type]
    assert result.status is status


def _row(target: str, time: str, regression: str, tps: str = "50") -> dict[str, str]:
    return {"time": time, "target": target, "tokens_per_s": tps, "regression": regression}


def test_bench_checks_the_newest_row_of_each_target() -> None:
    rows = [_row("gpu", "2026-03-01T00:00:00Z", "true", "20"),
            _row("gpu", "2026-03-08T00:00:00Z", "false", "55"),
            _row("cpu", "2026-03-08T00:00:00Z", "true", "4")]
    result = checks.bench(rows)
    assert result.status is Status.PROBLEM
    assert "cpu at 4 tok/s" in result.detail and "gpu" not in result.detail
    healthy = checks.bench(rows[:2])
    assert healthy.status is Status.OK
    assert checks.bench(Missing("no bench results")).status is Status.MISSING_SOURCE
