"""mushishi-backup's metrics: a run's or a check's record as a node_exporter textfile."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from mushishi.services.backup.core import Outcome
from mushishi.shared.metrics import new_registry

RUN_TEXTFILE = "mushishi_backup"
CHECK_TEXTFILE = "mushishi_backup_check"


def backup_metrics(record: dict[str, Any]) -> CollectorRegistry:
    """The run's facts as a registry for node_exporter's textfile collector."""
    registry = new_registry("backup")

    def gauge(name: str, text: str, value: float, labels: dict[str, str] | None = None) -> None:
        metric = Gauge(name, text, list(labels or {}), registry=registry)
        (metric.labels(**labels) if labels else metric).set(value)

    finished = datetime.fromisoformat(record["finished"])
    gauge("mushishi_backup_last_run_timestamp_seconds", "End of the last backup run.",
          finished.timestamp())
    if record.get("last_success_time"):
        gauge("mushishi_backup_last_success_timestamp_seconds",
              "End of the last run whose outcome was ok or warning.",
              datetime.fromisoformat(record["last_success_time"]).timestamp())
    gauge("mushishi_backup_run_duration_seconds", "Duration of the last run.",
          record["duration_s"])
    outcome = Gauge("mushishi_backup_outcome", "1 for the last run's outcome, 0 for the others.",
                    ["outcome"], registry=registry)
    for value in Outcome:
        outcome.labels(outcome=value.value).set(1 if record["outcome"] == value.value else 0)
    gauge("mushishi_backup_added_bytes", "Bytes added to the repository by the last run.",
          record["bytes_added"])
    gauge("mushishi_backup_new_files", "New files in the last run's snapshots.",
          record["files_new"])
    gauge("mushishi_backup_changed_files", "Changed files in the last run's snapshots.",
          record["files_changed"])
    gauge("mushishi_backup_warnings", "Warnings of the last run (see last.json).",
          len(record["warnings"]))
    set_ok = Gauge("mushishi_backup_set_ok", "1 when the set is in a complete new snapshot.",
                   ["path"], registry=registry)
    for item in record["sets"]:
        set_ok.labels(path=item["path"]).set(1 if item["status"] == "ok" else 0)
    verify = record["verify"]
    gauge("mushishi_backup_verify_ok", "1 when restore verification matched every sample.",
          1 if verify["outcome"] == "ok" else 0)
    gauge("mushishi_backup_verify_checked_files", "Files restored and compared.",
          verify["files_checked"])
    gauge("mushishi_backup_verify_mismatched_files", "Restored files that differ or failed.",
          len(verify["mismatches"]))
    gauge("mushishi_backup_retention_removed_snapshots", "Snapshots removed by retention.",
          record["retention"]["removed"])
    _copy_metrics(registry, record.get("copies") or [])
    return registry


COPY_OUTCOMES = ("ok", "warning", "failed", "skipped", "interrupted")


def _copy_metrics(registry: CollectorRegistry, copies: list[dict[str, Any]]) -> None:
    """One series per off-box copy, by `repository` (never the primary's series: one series
    in two places is a gathering error for node_exporter)."""
    if not copies:
        return
    labels = ["repository"]
    outcome = Gauge("mushishi_backup_copy_outcome", "1 for each copy's outcome in the last "
                    "run, 0 for the others.", ["outcome", "repository"], registry=registry)
    age = Gauge("mushishi_backup_copy_snapshot_age_seconds", "Age of the newest snapshot in "
                "the copy at the end of the last run (absent until one is known).", labels,
                registry=registry)
    newest = Gauge("mushishi_backup_copy_newest_snapshot_timestamp_seconds", "Time of the "
                   "newest snapshot in the copy.", labels, registry=registry)
    success = Gauge("mushishi_backup_copy_last_success_timestamp_seconds", "End of the last "
                    "run whose copy was ok or warning.", labels, registry=registry)
    verify = Gauge("mushishi_backup_copy_verify_ok", "1 when the restore sample from the "
                   "copy matched in the last run.", labels, registry=registry)
    verified = Gauge("mushishi_backup_copy_last_verified_timestamp_seconds", "End of the last "
                     "run whose restore sample from the copy matched.", labels,
                     registry=registry)
    copied = Gauge("mushishi_backup_copy_copied_snapshots", "Snapshots copied in the last "
                   "run (more than one: an earlier copy had failed).", labels,
                   registry=registry)
    for item in copies:
        repository = item["repository"]
        for value in COPY_OUTCOMES:
            outcome.labels(outcome=value, repository=repository).set(
                1 if item["outcome"] == value else 0)
        if item.get("snapshot_age_s") is not None:
            age.labels(repository=repository).set(item["snapshot_age_s"])
        for gauge_, field in ((newest, "newest_snapshot_time"), (success, "last_success_time"),
                              (verified, "last_verified_time")):
            if item.get(field):
                gauge_.labels(repository=repository).set(
                    datetime.fromisoformat(item[field]).timestamp())
        verify.labels(repository=repository).set(1 if item.get("verified") else 0)
        copied.labels(repository=repository).set(item.get("snapshots_copied", 0))


def check_metrics(record: dict[str, Any]) -> CollectorRegistry:
    """The check's facts as a registry (its own `daemon` label: node_exporter serves this
    file beside the backup's, and one series in two textfiles is a gathering error)."""
    registry = new_registry("backup_check")
    Gauge("mushishi_backup_check_last_run_timestamp_seconds", "End of the last restic check.",
          registry=registry).set(datetime.fromisoformat(record["finished"]).timestamp())
    Gauge("mushishi_backup_check_ok", "1 when the last restic check found no error.",
          registry=registry).set(1 if record["outcome"] == "ok" else 0)
    Gauge("mushishi_backup_check_duration_seconds", "Duration of the last restic check.",
          registry=registry).set(record["duration_s"])
    copies = record.get("copies") or []
    if copies:
        copy_ok = Gauge("mushishi_backup_check_copy_ok", "1 when the last restic check of "
                        "the copy found no error.", ["repository"], registry=registry)
        for item in copies:
            copy_ok.labels(repository=item["repository"]).set(
                1 if item["outcome"] == "ok" else 0)
    return registry
