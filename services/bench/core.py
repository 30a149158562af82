"""Pure decisions of `mushishi bench`: the fixed prompt set, which targets run, the result row
and the regression flag.

A target is `profile:NAME` (through the router, as a client would ask) or `backend:NAME` (a
local backend directly). A result row's `tokens_per_s` is completion tokens divided by the
wall-clock seconds of the whole prompt set (prompt processing included: what a user feels).
A run is a regression when it is more than `regression_ratio` slower than the mean of the
last `trailing_runs` rows of the same target answered by the same backend (a profile's
speed depends on which backend answered, which depends on the GPU mode).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# The CSV contract (columns read by the watchdog); `backend` and `gpu_mode` follow.
COLUMNS = ("time", "target", "prompt_tokens", "completion_tokens", "seconds", "tokens_per_s",
           "gpu_power_w", "gpu_temperature_c", "regression", "backend", "gpu_mode")

# Fixed forever: changing a prompt breaks the comparison with earlier rows. Short prompts
# (a few dozen tokens) so that a small context (the demo's CPU floor: 512) still fits them
# with their answers; what is measured is generation.
PROMPTS: tuple[str, ...] = (
    "Explain step by step how a hash table handles collisions.",
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Describe twenty ways to reduce the energy use of a home, one paragraph each.",
    "Write a detailed history of the bicycle, from its invention to today.",
)
WARM_UP_PROMPT = "Say hello."
SEED = 1234


@dataclass(frozen=True, slots=True)
class Target:
    """What one benchmark run asks: a profile through the router, or a backend directly."""

    kind: str  # "profile" | "backend"
    name: str

    @property
    def label(self) -> str:
        """The CSV's `target` column."""
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True, slots=True)
class Skip:
    """A target not run, and why (not an error)."""

    target: Target
    reason: str


@dataclass(frozen=True, slots=True)
class Completion:
    """One timed answer."""

    prompt_tokens: int
    completion_tokens: int
    seconds: float
    backend: str


def request_body(model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    """The chat completion asked for each prompt (greedy, seeded, not streamed)."""
    return {"model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": 0, "seed": SEED, "stream": False}


def choose_targets(requested: Sequence[Target], local_backends: Mapping[str, tuple[str, ...]
                   | None], active_mode: str | None) -> tuple[list[Target], list[Skip]]:
    """Targets to run now. `local_backends` maps each local backend to its GPU modes (None:
    always up); with nothing requested, every local backend is a target. A backend whose
    modes exclude the active GPU mode is skipped (it is not running), not failed."""
    targets = list(requested) or [Target("backend", name) for name in sorted(local_backends)]
    run: list[Target] = []
    skipped: list[Skip] = []
    for target in targets:
        modes = local_backends.get(target.name) if target.kind == "backend" else None
        if modes is not None and active_mode is not None and active_mode not in modes:
            skipped.append(Skip(target, f"GPU mode is {active_mode}; {target.name} runs in "
                                        f"{', '.join(sorted(modes))}"))
        else:
            run.append(target)
    return run, skipped


def trailing_average(rows: Iterable[Mapping[str, str]], target: str, backend: str,
                     runs: int) -> tuple[float | None, int]:
    """Mean tokens/s of the last `runs` rows of `target` answered by `backend`, and how many
    rows it averages (rows are in file order, oldest first)."""
    speeds = []
    for row in rows:
        if row.get("target") == target and row.get("backend", "") == backend:
            try:
                speeds.append(float(row["tokens_per_s"]))
            except (KeyError, TypeError, ValueError):
                continue
    recent = speeds[-runs:]
    if not recent:
        return None, 0
    return sum(recent) / len(recent), len(recent)


def is_regression(tokens_per_s: float, average: float | None, ratio: float) -> bool:
    """More than `ratio` slower than the trailing average (never without one)."""
    return average is not None and average > 0 and tokens_per_s < (1 - ratio) * average


def _number(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


@dataclass(frozen=True, slots=True)
class Result:
    """One target's run: the CSV row and what the screen says about it."""

    row: dict[str, str]
    average: float | None
    averaged_runs: int

    @property
    def tokens_per_s(self) -> float:
        """Completion tokens per second."""
        return float(self.row["tokens_per_s"])

    @property
    def regression(self) -> bool:
        """Whether the row is flagged."""
        return self.row["regression"] == "true"


def make_result(target: Target, completions: Sequence[Completion], *, time: datetime,
                history: Sequence[Mapping[str, str]], ratio: float, runs: int,
                gpu_power_w: float | None, gpu_temperature_c: float | None,
                gpu_mode: str | None) -> Result:
    """The row for a finished target, flagged against the history of the CSV."""
    prompt = sum(c.prompt_tokens for c in completions)
    completion = sum(c.completion_tokens for c in completions)
    seconds = sum(c.seconds for c in completions)
    speed = completion / seconds if seconds > 0 else 0.0
    backends = sorted({c.backend for c in completions})
    backend = backends[0] if len(backends) == 1 else "+".join(backends)
    average, averaged = trailing_average(history, target.label, backend, runs)
    row = {
        "time": time.isoformat(timespec="seconds"),
        "target": target.label,
        "prompt_tokens": str(prompt),
        "completion_tokens": str(completion),
        "seconds": f"{seconds:.3f}",
        "tokens_per_s": f"{speed:.2f}",
        "gpu_power_w": _number(gpu_power_w, 1),
        "gpu_temperature_c": _number(gpu_temperature_c, 0),
        "regression": "true" if is_regression(round(speed, 2), average, ratio) else "false",
        "backend": backend,
        "gpu_mode": gpu_mode or "",
    }
    return Result(row, average, averaged)


def describe(result: Result, ratio: float) -> str:
    """One line for the terminal and the journal."""
    row = result.row
    text = (f"{row['target']} → {row['backend']}: {row['prompt_tokens']} prompt + "
            f"{row['completion_tokens']} completion tokens in {float(row['seconds']):.1f} s = "
            f"{result.tokens_per_s:.1f} tok/s")
    if row["gpu_power_w"]:
        text += f", GPU {row['gpu_power_w']} W, {row['gpu_temperature_c']} °C"
    if result.average is None:
        return text + " (first run of this target and backend: nothing to compare with)"
    change = result.tokens_per_s / result.average - 1
    text += (f"; {change:+.0%} against the trailing average {result.average:.1f} tok/s of "
             f"{result.averaged_runs} run(s)")
    if result.regression:
        text += f": REGRESSION (more than {ratio:.0%} slower)"
    return text
