"""`[ntfy]` and `[watchdog]`: outcome checks and the alerts that reach a phone."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mushishi.shared.config._base import AbsolutePath, CredentialName, Section

Weekday = Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


class NtfySettings(Section):
    """Where alerts are published (ntfy.sh or a self-hosted ntfy)."""

    url: str = Field(default="https://ntfy.sh", description="ntfy server base URL.")
    topic_credential: CredentialName = Field(
        default="ntfy-topic", description="Credential holding the topic (a topic is a secret)."
    )
    token_credential: CredentialName | None = Field(
        default="ntfy-token", description="Credential holding an access token, if the server "
        "needs one; a missing credential file means no token."
    )


class WatchdogSettings(Section):
    """mushishi-watchdog: daily outcome checks and a weekly heartbeat."""

    state_dir: AbsolutePath = Field(
        default="/var/lib/mushishi/watchdog",
        description="Last results, alert dedup state and the undelivered-alert outbox.",
    )
    disk_mounts: list[AbsolutePath] = Field(
        default=["/"], description="Mount points whose usage is checked."
    )
    disk_max_percent: float = Field(
        default=90, gt=0, le=100, description="Usage at or above this is a problem."
    )
    backup_max_age_days: float = Field(
        default=8, gt=0, description="Newest restic snapshot older than this is a problem."
    )
    copy_max_age_days: float | None = Field(
        default=None, gt=0, description="Newest snapshot in an off-box copy "
        "([[backup.copies]]) older than this is a problem; unset: backup_max_age_days (a copy "
        "is made after every backup, so it is as fresh as the box's own repository unless "
        "copying fails)."
    )
    cloud_share_max: float = Field(
        default=0.10, ge=0, le=1, description="Share of router requests served by cloud above "
        "which an alert is sent."
    )
    heartbeat_weekday: Weekday = Field(
        default="monday", description="Day of the weekly 'watchdog alive' message."
    )
    repeat_after_h: float = Field(
        default=24, gt=0, description="The same set of problems is not re-sent sooner."
    )
    always_on_units: list[str] = Field(
        default=["mushishi-router.service", "mushishi-egress.service",
                 "mushishi-cpu-floor.service", "mushishi-gpud.service",
                 "mushishi-sovereignty.service"],
        description="Units that must be active in every mode (a socket-activated service "
        "waiting on its active socket counts as active).",
    )
    cloud_share_min_requests: int = Field(
        default=20, ge=0, description="The cloud share is judged only over at least this many "
        "router requests in the last day, so one cloud answer out of two is not an alert."
    )
    gpu_max_temperature_c: float = Field(
        default=85, gt=0, description="GPU temperature (from gpud) at or above which an alert "
        "is sent."
    )
    bench_results: AbsolutePath = Field(
        default="/var/lib/mushishi/bench/results.csv",
        description="`mushishi bench` results; the newest row of each target is checked for "
        "a regression.",
    )
    alert_journal_lines: int = Field(
        default=30, gt=0, le=500, description="Journal records of a failed unit sent with its "
        "immediate alert (mushishi-alert@): systemd's own and mushishi's redacted ones, never "
        "a process's output (docs/alerts.md)."
    )
    http_timeout_s: float = Field(
        default=10, gt=0, description="Timeout of each HTTP request (ntfy, router status, CPU "
        "floor) and each D-Bus or restic query."
    )
    textfile_dir: AbsolutePath = Field(
        default="/var/lib/prometheus/node-exporter",
        description="node_exporter textfile collector directory for the watchdog's metrics.",
    )
