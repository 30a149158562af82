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
        default=["mushishi-router.service", "mushishi-cpu-floor.service",
                 "mushishi-gpud.service"],
        description="Units that must be active in every mode.",
    )
