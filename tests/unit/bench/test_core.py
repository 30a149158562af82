"""The bench's decisions: which targets run, the trailing average, the regression flag."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mushishi.services.bench.app import local_backends
from mushishi.services.bench.core import (
    COLUMNS,
    PROMPTS,
    Completion,
    Target,
    choose_targets,
    describe,
    is_regression,
    make_result,
    request_body,
    trailing_average,
)
from mushishi.shared.config import load_config
from tests.paths import EXAMPLE_CONFIG

NOW = datetime(2026, 3, 11, 9, 0, tzinfo=UTC)
LOCAL = {"gpu": ("agent", "forensic"), "cpu": None}


def row(target: str, backend: str, speed: float) -> dict[str, str]:
    return {"target": target, "backend": backend, "tokens_per_s": f"{speed:.2f}"}


@pytest.mark.parametrize(("requested", "mode", "run", "skipped"), [
    ([], "agent", ["backend:cpu", "backend:gpu"], []),
    ([], "creative", ["backend:cpu"], ["backend:gpu"]),
    ([], None, ["backend:cpu", "backend:gpu"], []),  # no gpud: try everything
    ([Target("profile", "private")], "off", ["profile:private"], []),
    ([Target("backend", "gpu")], "off", [], ["backend:gpu"]),
])
def test_choose_targets_skips_backends_of_another_gpu_mode(
        requested: list[Target], mode: str | None, run: list[str], skipped: list[str]) -> None:
    chosen, skips = choose_targets(requested, LOCAL, mode)
    assert [t.label for t in chosen] == run
    assert [s.target.label for s in skips] == skipped
    for skip in skips:
        assert mode in skip.reason


def test_trailing_average_uses_the_last_runs_of_the_same_target_and_backend() -> None:
    history = [row("profile:private", "gpu", 100), row("profile:private", "cpu", 10),
               row("profile:private", "gpu", 50), row("backend:gpu", "gpu", 999),
               row("profile:private", "gpu", 70), {"target": "profile:private",
                                                    "backend": "gpu", "tokens_per_s": "x"}]
    assert trailing_average(history, "profile:private", "gpu", 2) == (60.0, 2)
    assert trailing_average(history, "profile:private", "gpu", 5) == (
        pytest.approx(220 / 3), 3)
    assert trailing_average(history, "profile:private", "cpu", 5) == (10.0, 1)
    assert trailing_average(history, "profile:other", "gpu", 5) == (None, 0)


@pytest.mark.parametrize(("speed", "average", "flagged"), [
    (84.9, 100.0, True),    # 15.1% slower
    (85.0, 100.0, False),   # exactly 15%: not more than
    (90.0, 100.0, False),
    (120.0, 100.0, False),  # faster is never a regression
    (1.0, None, False),     # nothing to compare with
])
def test_is_regression_when_more_than_the_ratio_slower(speed: float, average: float | None,
                                                        flagged: bool) -> None:
    assert is_regression(speed, average, 0.15) is flagged


def test_make_result_sums_the_prompt_set_and_flags_against_history() -> None:
    completions = [Completion(20, 128, 2.0, "gpu"), Completion(30, 128, 2.0, "gpu")]
    history = [row("profile:private", "gpu", 100.0)] * 3
    result = make_result(Target("profile", "private"), completions, time=NOW,
                         history=history, ratio=0.15, runs=5, gpu_power_w=412.25,
                         gpu_temperature_c=71.0, gpu_mode="agent")
    assert list(result.row) == list(COLUMNS)
    assert result.row == {
        "time": "2026-03-11T09:00:00+00:00", "target": "profile:private",
        "prompt_tokens": "50", "completion_tokens": "256", "seconds": "4.000",
        "tokens_per_s": "64.00", "gpu_power_w": "412.2", "gpu_temperature_c": "71",
        "regression": "true", "backend": "gpu", "gpu_mode": "agent"}
    assert result.regression
    line = describe(result, 0.15)
    assert "64.0 tok/s" in line and "REGRESSION" in line and "-36%" in line


def test_make_result_without_gpud_leaves_gpu_columns_empty_and_is_not_flagged_first() -> None:
    result = make_result(Target("backend", "cpu"), [Completion(10, 64, 1.0, "cpu")], time=NOW,
                         history=[row("backend:cpu", "other", 1000.0)], ratio=0.15, runs=5,
                         gpu_power_w=None, gpu_temperature_c=None, gpu_mode=None)
    assert result.row["gpu_power_w"] == result.row["gpu_temperature_c"] == ""
    assert result.row["gpu_mode"] == ""
    assert result.row["regression"] == "false"
    assert "first run" in describe(result, 0.15)


def test_a_profile_answered_by_two_backends_is_its_own_series() -> None:
    completions = [Completion(1, 10, 1.0, "gpu"), Completion(1, 10, 1.0, "cpu")]
    result = make_result(Target("profile", "personal"), completions, time=NOW, history=[],
                         ratio=0.15, runs=5, gpu_power_w=None, gpu_temperature_c=None,
                         gpu_mode=None)
    assert result.row["backend"] == "cpu+gpu"


def test_request_body_is_greedy_seeded_and_not_streamed() -> None:
    body = request_body("private", PROMPTS[0], 64)
    assert body["temperature"] == 0 and body["stream"] is False and body["max_tokens"] == 64
    assert body["seed"] == request_body("x", PROMPTS[1], 1)["seed"]
    assert len(PROMPTS) == 4 and all(len(p) < 200 for p in PROMPTS)


def test_the_default_targets_are_the_local_backends_that_serve_chat() -> None:
    # The example's speech, embedding and rerank servers have nothing to time with a chat.
    assert local_backends(load_config(EXAMPLE_CONFIG).settings) == {
        "gpu": ("forensic", "agent"), "cpu": None}
