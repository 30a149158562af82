"""scripts/gpu-check: the comparison of our NVML probe with nvidia-smi (no GPU here: the
pure parts, and the clear refusal on a machine without one)."""

from __future__ import annotations

import subprocess

import pytest

from scripts.gpu_check import QUERY_GPU, Row, number, parse_csv, render
from tests.paths import REPO

H200 = ("NVIDIA H200, 143771, 512, 0, 31, 74.52, 700.00, 200.00, 700.00\n")


def test_parse_csv_reads_one_gpu_row_by_field_name() -> None:
    [row] = parse_csv(H200, QUERY_GPU)
    assert row["name"] == "NVIDIA H200"
    assert number(row["memory.total"]) == 143771.0
    assert number(row["power.draw"]) == 74.52


def test_parse_csv_refuses_a_row_with_other_columns() -> None:
    with pytest.raises(ValueError, match="printed 3 columns, expected 9"):
        parse_csv("a, b, c\n", QUERY_GPU)


@pytest.mark.parametrize(("text", "value"), [("[N/A]", None), (" 12.5 ", 12.5), ("", None),
                                             ("[Not Supported]", None)])
def test_number_reads_nvidia_smi_values(text: str, value: float | None) -> None:
    assert number(text) == value


@pytest.mark.parametrize(("row", "agrees"), [
    (Row("memory total MiB", 143771.0, 143771.0, 1.0), True),
    (Row("memory used MiB", 512.0, 600.0, 64.0), False),
    (Row("power W", 74.5, 80.0, 30.0), True),
    (Row("power W", 74.5, None, 30.0), False),
    (Row("name", "NVIDIA H200", "NVIDIA H200"), True),
    (Row("process 7 MiB", 100.0, None, 2.0), False),
])
def test_a_row_agrees_within_its_tolerance(row: Row, agrees: bool) -> None:
    assert row.agrees is agrees


def test_render_marks_what_differs() -> None:
    text = render([Row("name", "a", "a"), Row("memory used MiB", 1.0, 900.0, 64.0)])
    lines = text.splitlines()
    assert "differs" not in lines[1] and lines[2].endswith("<- differs")
    assert "n/a" in render([Row("power W", None, 1.0)])


def test_without_a_gpu_it_says_so_and_exits_2() -> None:
    result = subprocess.run([str(REPO / "scripts" / "gpu-check")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2, result
    assert "gpu-check: NVML unavailable" in result.stderr
    assert "install the driver" in result.stderr
