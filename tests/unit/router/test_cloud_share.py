"""Cloud share per profile over the last hour and day, with an injected clock."""

from __future__ import annotations

from mushishi.services.router.cloud_share import CloudShare


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_share_counts_cloud_answers_over_hour_and_day() -> None:
    clock = Clock()
    share = CloudShare(clock)
    for _ in range(9):
        share.record("personal", cloud=False)
    share.record("personal", cloud=True)
    result = share.share("personal")
    assert (result.hour, result.day, result.requests_hour, result.requests_day) == (
        0.1, 0.1, 10, 10)


def test_old_requests_leave_the_hour_then_the_day() -> None:
    clock = Clock()
    share = CloudShare(clock)
    share.record("personal", cloud=True)
    clock.now += 2 * 3600
    share.record("personal", cloud=False)
    result = share.share("personal")
    assert (result.hour, result.requests_hour) == (0.0, 1)
    assert (result.day, result.requests_day) == (0.5, 2)
    clock.now += 23 * 3600
    result = share.share("personal")
    assert (result.requests_hour, result.requests_day, result.day) == (0, 1, 0.0)


def test_a_reused_minute_slot_is_reset_a_day_later() -> None:
    clock = Clock()
    share = CloudShare(clock)
    share.record("p", cloud=True)
    clock.now += 24 * 3600  # the same slot of the ring, one day later
    share.record("p", cloud=False)
    result = share.share("p")
    assert (result.requests_day, result.cloud_day) == (1, 0)


def test_profile_without_requests_has_zero_share() -> None:
    result = CloudShare(Clock()).share("never")
    assert (result.hour, result.day, result.requests_day) == (0.0, 0.0, 0)
