"""The results CSV keeps its contract, one writer at a time; the textfile passes promtool."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mushishi.services.bench import results
from mushishi.services.bench.core import COLUMNS

ROW = {"time": "2026-03-11T09:00:00+00:00", "target": "backend:cpu", "prompt_tokens": "10",
       "completion_tokens": "64", "seconds": "1.000", "tokens_per_s": "64.00",
       "gpu_power_w": "", "gpu_temperature_c": "", "regression": "false", "backend": "cpu",
       "gpu_mode": ""}


def test_a_new_file_gets_the_contract_header_and_rows_append(tmp_path: Path) -> None:
    path = tmp_path / "bench" / "results.csv"
    with results.locked(path) as handle:
        assert results.read_rows(handle) == []
        results.append(handle, [ROW])
    with results.locked(path) as handle:
        results.append(handle, [{**ROW, "tokens_per_s": "50.00", "regression": "true"}])
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS)
    assert lines[0].startswith("time,target,prompt_tokens,completion_tokens,seconds,"
                               "tokens_per_s,gpu_power_w,gpu_temperature_c,regression")
    assert [r["tokens_per_s"] for r in results.read_history(path)] == ["64.00", "50.00"]


def test_a_file_with_other_columns_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    path.write_text("when,speed\n1,2\n")
    refused = r"results\.csv has columns.*watchdog\.bench_results"
    with pytest.raises(results.ResultsError, match=refused), results.locked(path):
        pass
    assert path.read_text() == "when,speed\n1,2\n"


def test_textfile_shows_the_newest_row_of_each_target_and_passes_promtool(
        tmp_path: Path) -> None:
    rows = [ROW, {**ROW, "tokens_per_s": "40.00", "regression": "true"},
            {**ROW, "target": "profile:private", "backend": "gpu", "tokens_per_s": "90.50"}]
    written = results.write_metrics(rows, str(tmp_path), datetime(2026, 3, 11, tzinfo=UTC))
    text = written.read_text()
    assert 'mushishi_bench_tokens_per_second{backend="cpu",target="backend:cpu"} 40.0' in text
    assert 'mushishi_bench_regression{backend="cpu",target="backend:cpu"} 1.0' in text
    assert 'mushishi_bench_tokens_per_second{backend="gpu",target="profile:private"} 90.5' \
        in text
    check = subprocess.run(["/usr/bin/promtool", "check", "metrics"], input=text,
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
