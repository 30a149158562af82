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


def test_state_survives_a_save_and_load_and_drops_what_is_older_than_a_day(tmp_path) -> None:
    from mushishi.services.router.cloud_share import load_state, save_state

    clock = Clock()
    share = CloudShare(clock)
    share.record("personal", cloud=True)
    clock.now += 3 * 3600
    share.record("personal", cloud=False)
    share.record("private", cloud=False)
    path = tmp_path / "state" / "cloud-share.json"
    save_state(share, path)
    clock.now += 22 * 3600  # the first request is now 25 h old, the others 22 h
    restored = CloudShare(clock)
    assert load_state(restored, path) == 2
    assert restored.share("personal").requests_day == 1
    assert restored.share("personal").day == 0.0
    assert restored.share("private").requests_day == 1


def test_a_corrupt_state_file_is_refused_and_a_missing_one_is_empty(tmp_path) -> None:
    import pytest

    from mushishi.services.router.cloud_share import load_state

    share = CloudShare(Clock())
    assert load_state(share, tmp_path / "absent.json") == 0
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError):
        load_state(share, tmp_path / "bad.json")
    (tmp_path / "odd.json").write_text('{"version": 1, "cloud_share": {"p": [[1, 2], "x", '
                                       '[1800000000, 1, 5]]}}')
    assert load_state(share, tmp_path / "odd.json") == 0
