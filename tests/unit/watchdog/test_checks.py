"""The watchdog's checks over plain data: ok, problem, or missing-source (never healthy)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mushishi.services.watchdog import checks
from mushishi.services.watchdog.checks import DiskUsage, Status, UnitState
from mushishi.shared.gpumode import GpuModeProperties
from mushishi.shared.readings import Reading, down, error, missing, ok
from mushishi.shared.router_status import ContractError, RouterStatus
from tests.standins.router_status import status_document

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def reading(value: object) -> Reading:
    """A fact as gathered: a reading as it is, any other value as an ok reading of it."""
    return value if isinstance(value, Reading) else ok(value)


@pytest.mark.parametrize(("snapshots", "status"), [
    ([NOW - timedelta(days=1), NOW - timedelta(days=9)], Status.OK),
    ([NOW - timedelta(days=8, hours=1)], Status.PROBLEM),
    ([], Status.PROBLEM),
    (error("restic snapshots exited 1: wrong password"), Status.PROBLEM),
    (missing("no repository configured"), Status.MISSING_SOURCE),
])
def test_backup_age(snapshots: object, status: Status) -> None:
    result = checks.backup_age(reading(snapshots), now=NOW, max_age_days=8)  # type: ignore[arg-type]
    assert result.name == "backup-age" and result.status is status


def test_backup_age_names_the_limit_key() -> None:
    result = checks.backup_age(ok([NOW - timedelta(days=20)]), now=NOW, max_age_days=8)
    assert "20.0 days old" in result.detail
    assert "watchdog.backup_max_age_days" in result.detail


@pytest.mark.parametrize(("outcome", "status"), [
    ("ok", Status.OK), ("warning", Status.PROBLEM), ("partial", Status.PROBLEM),
    ("failed", Status.PROBLEM), ("interrupted", Status.PROBLEM),
])
def test_backup_result_only_ok_is_healthy(outcome: str, status: Status) -> None:
    last = {"outcome": outcome, "finished": "t", "snapshot_ids": ["a"],
            "warnings": ["/data/x does not exist"], "errors": []}
    assert checks.backup_result(ok(last)).status is status


def test_backup_result_detail_carries_the_warning() -> None:
    result = checks.backup_result(ok({"outcome": "warning",
                                      "warnings": ["/data/x does not exist"]}))
    assert "/data/x does not exist" in result.detail


def test_backup_never_ran_is_missing_source_not_ok() -> None:
    result = checks.backup_result(missing("no backup has run yet"))
    assert result.status is Status.MISSING_SOURCE


@pytest.mark.parametrize(("verify", "status"), [
    ({"outcome": "ok", "files_matched": 3}, Status.OK),
    ({"outcome": "failed", "mismatches": ["/a: SHA-256 differs"]}, Status.PROBLEM),
    ({"outcome": "inconclusive", "error": "every sampled file changed"}, Status.PROBLEM),
    ({"outcome": "skipped", "error": "no snapshot"}, Status.MISSING_SOURCE),
])
def test_restore_verify(verify: dict[str, object], status: Status) -> None:
    assert checks.restore_verify(ok({"verify": verify})).status is status


def test_backup_check() -> None:
    assert checks.backup_check(ok({"outcome": "ok"})).status is Status.OK
    failed = checks.backup_check(ok({"outcome": "failed", "error": "pack abc damaged"}))
    assert failed.status is Status.PROBLEM and "pack abc damaged" in failed.detail
    assert checks.backup_check(missing("not yet")).status is Status.MISSING_SOURCE


GIB = 1 << 30


@pytest.mark.parametrize(("total", "free", "avail", "status"), [
    (100 * GIB, 50 * GIB, 45 * GIB, Status.OK),
    # df's Use% counts root's reserve as unavailable: 85 used / (85 + 9) = 90.4%
    (100 * GIB, 15 * GIB, 9 * GIB, Status.PROBLEM),
    (100 * GIB, 11 * GIB, 11 * GIB, Status.OK),   # 89%
    (100 * GIB, 10 * GIB, 10 * GIB, Status.PROBLEM),  # exactly 90%: "at or above"
])
def test_disk_use_at_or_above_limit(total: int, free: int, avail: int, status: Status) -> None:
    result = checks.disk("/data", ok(DiskUsage(total, free, avail)), max_percent=90)
    assert result.name == "disk:/data" and result.status is status


def test_missing_mount_is_a_problem() -> None:
    result = checks.disk("/data", error("/data does not exist"), max_percent=90)
    assert result.status is Status.PROBLEM


@pytest.mark.parametrize(("state", "status"), [
    (UnitState("loaded", "active", "running"), Status.OK),
    (UnitState("loaded", "failed", "failed", "exit-code"), Status.PROBLEM),
    (UnitState("loaded", "inactive", "dead", socket_active=True), Status.OK),
    (UnitState("loaded", "inactive", "dead", socket_active=False), Status.PROBLEM),
    (UnitState("loaded", "inactive", "dead"), Status.PROBLEM),
    (UnitState("not-found", "inactive", "dead"), Status.PROBLEM),
    (error("cannot connect to the system bus"), Status.PROBLEM),
])
def test_unit_active(state: object, status: Status) -> None:
    result = checks.unit_active("mushishi-router.service", reading(state))
    assert result.name == "unit:mushishi-router.service" and result.status is status


def test_failed_unit_detail_points_at_its_journal() -> None:
    result = checks.unit_active("mushishi-gpud.service",
                                ok(UnitState("loaded", "failed", "failed", "exit-code")))
    assert "journalctl -u mushishi-gpud.service" in result.detail
    assert "exit-code" in result.detail


ACTIVE = UnitState("loaded", "active", "running")


@pytest.mark.parametrize(("state", "models", "status"), [
    (ACTIVE, ["nemotron-cpu-prism"], Status.OK),
    (ACTIVE, ["model.gguf"], Status.PROBLEM),   # the seed's lesson: file name, not alias
    (ACTIVE, error("GET failed: connection refused"), Status.PROBLEM),
    (UnitState("loaded", "activating", "start"), ["nemotron-cpu-prism"], Status.PROBLEM),
])
def test_cpu_floor_ready_means_alias_answers(state: UnitState, models: object,
                                             status: Status) -> None:
    result = checks.cpu_floor("mushishi-cpu-floor.service", ok(state), reading(models),
                              alias="nemotron-cpu-prism", url="http://127.0.0.1:8001/v1/models")
    assert result.status is status


def _status(shares: dict[str, tuple[float, int]]) -> Reading[RouterStatus]:
    return ok(RouterStatus.from_json(status_document(
        {p: {"hour": 0.0, "day": s, "requests_hour": 0, "requests_day": n}
         for p, (s, n) in shares.items()})))


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
    result = checks.cloud_share(missing("router socket absent"), max_share=0.1, min_requests=1)
    assert result.status is Status.MISSING_SOURCE
    # A router that does not answer is its unit check's problem; here, not checked.
    assert checks.cloud_share(down("did not answer within 5 s"), max_share=0.1,
                              min_requests=1).status is Status.MISSING_SOURCE


def test_cloud_share_of_a_status_without_cloud_share_is_never_healthy() -> None:
    # The shared client reads such a body as an error (it is not the /status contract).
    with pytest.raises(ContractError, match="cloud_share"):
        RouterStatus.from_json({**status_document({}), "cloud_share": None})
    with pytest.raises(ContractError, match="has no 'version'"):
        RouterStatus.from_json({"sovereignty": {}})
    assert checks.cloud_share(error("the router's /status does not match this mushishi"),
                              max_share=0.1, min_requests=1).status is Status.PROBLEM


@pytest.mark.parametrize(("gpud", "status"), [
    (GpuModeProperties(state="ready", temperature_c=60, throttled=False), Status.OK),
    (GpuModeProperties(state="ready", temperature_c=85, throttled=False), Status.PROBLEM),
    (GpuModeProperties(state="ready", temperature_c=60, throttled=True), Status.PROBLEM),
    (GpuModeProperties(state="failed", state_reason="tenant vllm-agent did not become ready",
                       temperature_c=60, throttled=False), Status.PROBLEM),
    (GpuModeProperties(state="ready"), Status.MISSING_SOURCE),
    (down("gpud is not on the system bus"), Status.MISSING_SOURCE),
    (error("reading io.mushishi.GpuMode1 failed: AccessDenied"), Status.PROBLEM),
    (error("cannot connect to the system bus"), Status.PROBLEM),
])
def test_gpu(gpud: object, status: Status) -> None:
    result = checks.gpu(reading(gpud), max_temperature_c=85)
    assert result.status is status


def _row(target: str, time: str, regression: str, tps: str = "50") -> dict[str, str]:
    return {"time": time, "target": target, "tokens_per_s": tps, "regression": regression}


def test_bench_checks_the_newest_row_of_each_target() -> None:
    rows = [_row("gpu", "2026-03-01T00:00:00Z", "true", "20"),
            _row("gpu", "2026-03-08T00:00:00Z", "false", "55"),
            _row("cpu", "2026-03-08T00:00:00Z", "true", "4")]
    result = checks.bench(ok(rows))
    assert result.status is Status.PROBLEM
    assert "cpu at 4 tok/s" in result.detail and "gpu" not in result.detail
    healthy = checks.bench(ok(rows[:2]))
    assert healthy.status is Status.OK
    assert checks.bench(missing("no bench results")).status is Status.MISSING_SOURCE
