"""Per profile, the share of answered requests that a cloud backend served: last hour, last day.

Counts live in one-minute buckets (a ring of 1,440), so recording is O(1) and a read sums at
most a day of buckets. The clock is injected: a function returning seconds since the epoch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mushishi.shared.files import write_json

MINUTES_PER_DAY = 1440


@dataclass(frozen=True, slots=True)
class Share:
    """Cloud share of one profile over the last hour and day."""

    hour: float
    day: float
    requests_hour: int
    requests_day: int
    cloud_hour: int
    cloud_day: int

    def as_json(self) -> dict[str, float | int]:
        """The `cloud_share` entry of GET /status."""
        return {"hour": self.hour, "day": self.day, "requests_hour": self.requests_hour,
                "requests_day": self.requests_day, "cloud_requests_hour": self.cloud_hour,
                "cloud_requests_day": self.cloud_day}


class _Ring:
    __slots__ = ("cloud", "minute", "total")

    def __init__(self) -> None:
        self.minute = [-1] * MINUTES_PER_DAY
        self.total = [0] * MINUTES_PER_DAY
        self.cloud = [0] * MINUTES_PER_DAY


class CloudShare:
    """Sliding hour and day windows of (answered, answered by cloud) per profile."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._rings: dict[str, _Ring] = {}

    def record(self, profile: str, cloud: bool) -> None:
        """Count one answered request of `profile`, served by cloud or not."""
        minute = int(self._clock() // 60)
        ring = self._rings.get(profile)
        if ring is None:
            ring = self._rings[profile] = _Ring()
        slot = minute % MINUTES_PER_DAY
        if ring.minute[slot] != minute:
            ring.minute[slot] = minute
            ring.total[slot] = 0
            ring.cloud[slot] = 0
        ring.total[slot] += 1
        if cloud:
            ring.cloud[slot] += 1

    def share(self, profile: str) -> Share:
        """The profile's cloud share now (0.0 when it answered nothing)."""
        ring = self._rings.get(profile)
        now = int(self._clock() // 60)
        totals = [0, 0, 0, 0]  # hour total, hour cloud, day total, day cloud
        if ring is not None:
            for slot in range(MINUTES_PER_DAY):
                age = now - ring.minute[slot]
                if 0 <= age < MINUTES_PER_DAY:
                    totals[2] += ring.total[slot]
                    totals[3] += ring.cloud[slot]
                    if age < 60:
                        totals[0] += ring.total[slot]
                        totals[1] += ring.cloud[slot]
        hour_total, hour_cloud, day_total, day_cloud = totals
        return Share(
            hour=hour_cloud / hour_total if hour_total else 0.0,
            day=day_cloud / day_total if day_total else 0.0,
            requests_hour=hour_total, requests_day=day_total,
            cloud_hour=hour_cloud, cloud_day=day_cloud,
        )

    def dump(self) -> dict[str, list[list[int]]]:
        """The last day's buckets, as JSON-ready [minute, total, cloud] rows per profile."""
        now = int(self._clock() // 60)
        out: dict[str, list[list[int]]] = {}
        for profile, ring in self._rings.items():
            rows = [[ring.minute[i], ring.total[i], ring.cloud[i]]
                    for i in range(MINUTES_PER_DAY)
                    if 0 <= now - ring.minute[i] < MINUTES_PER_DAY and ring.total[i]]
            if rows:
                out[profile] = rows
        return out

    def load(self, data: Any) -> int:
        """Merge buckets from dump(); rows older than a day, or malformed, are ignored."""
        now = int(self._clock() // 60)
        loaded = 0
        if not isinstance(data, dict):
            return 0
        for profile, rows in data.items():
            if not isinstance(profile, str) or not isinstance(rows, list):
                continue
            for row in rows:
                if not (isinstance(row, list) and len(row) == 3
                        and all(isinstance(v, int) and v >= 0 for v in row)):
                    continue
                minute, total, cloud = row
                if not 0 <= now - minute < MINUTES_PER_DAY or cloud > total:
                    continue
                ring = self._rings.setdefault(profile, _Ring())
                slot = minute % MINUTES_PER_DAY
                if ring.minute[slot] != minute:
                    ring.minute[slot], ring.total[slot], ring.cloud[slot] = minute, 0, 0
                ring.total[slot] += total
                ring.cloud[slot] += cloud
                loaded += 1
        return loaded


def save_state(share: CloudShare, path: Path) -> None:
    """Write the cloud-share buckets atomically (a crash leaves the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"version": 1, "cloud_share": share.dump()})


def load_state(share: CloudShare, path: Path) -> int:
    """Load buckets saved by save_state; a missing file loads nothing. Raises ValueError or
    OSError for an unreadable one."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return 0
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("version") != 1:
        raise ValueError(f"{path} is not a cloud-share state file of version 1")
    return share.load(data.get("cloud_share"))
