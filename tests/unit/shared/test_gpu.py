"""The simulated GPU probe, NVML conversions, and NVML's failure on a machine without a GPU.

This machine has no NVIDIA GPU or driver: the NVML path is tested for its conversions and
for failing with one clear line; reading a real GPU is not tested here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from mushishi.shared.config.gpu import GpuSettings
from mushishi.shared.gpu import (
    MIB,
    GpuProbeError,
    GpuProcess,
    NvmlProbe,
    SimulatedProbe,
    check_power_limit,
    open_probe,
    processes_from_nvml,
    throttle_names,
)


def write(path: Path, **fields: object) -> Path:
    state = {"total_mib": 32607, "used_mib": 500, **fields}
    path.write_text(json.dumps(state))
    return path


def test_simulated_probe_reads_the_design_example(tmp_path: Path) -> None:
    state = write(tmp_path / "gpu.json", util_percent=12, temperature_c=40, power_w=20,
                  processes=[{"pid": os.getpid(), "name": "x", "used_mib": 100}])
    snapshot = SimulatedProbe(state).read()
    assert (snapshot.total_mib, snapshot.used_mib, snapshot.free_mib) == (32607, 500, 32107)
    assert (snapshot.util_percent, snapshot.temperature_c, snapshot.power_w) == (12, 40, 20.0)
    assert snapshot.processes == (GpuProcess(os.getpid(), "x", 100),)
    assert snapshot.throttled is False


def test_simulated_memory_of_an_exited_process_is_free_again(tmp_path: Path) -> None:
    state = write(tmp_path / "gpu.json", used_mib=20500,
                  processes=[{"pid": 4242, "name": "ollama", "used_mib": 20000}])
    alive = {4242}
    probe = SimulatedProbe(state, alive=lambda pid: pid in alive)
    assert probe.read().free_mib == 32607 - 20500
    alive.clear()
    snapshot = probe.read()
    assert snapshot.used_mib == 500 and snapshot.processes == ()


def test_simulated_power_limit_is_written_back(tmp_path: Path) -> None:
    state = write(tmp_path / "gpu.json")
    probe = SimulatedProbe(state)
    probe.set_power_limit(450)
    assert probe.read().power_limit_w == 450
    assert json.loads(state.read_text())["total_mib"] == 32607


@pytest.mark.parametrize(("content", "message"), [
    (None, "does not exist"),
    ("{not json", "unreadable"),
    ("[1]", "not a JSON object"),
    ('{"used_mib": 1}', "malformed"),
])
def test_simulated_probe_errors_name_the_file(tmp_path: Path, content: str | None,
                                              message: str) -> None:
    path = tmp_path / "gpu.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(GpuProbeError, match=message) as error:
        SimulatedProbe(path).read()
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_throttle_names_ignore_idle_for_throttled() -> None:
    assert throttle_names(0) == ()
    assert throttle_names(0x1) == ("gpu-idle",)
    assert throttle_names(0x4 | 0x40) == ("sw-power-cap", "hw-thermal-slowdown")
    assert throttle_names(0x10000) == ("unknown-0x10000",)


def test_processes_from_nvml_convert_bytes_and_names() -> None:
    found = [SimpleNamespace(pid=10, usedGpuMemory=3 * 1024 * MIB),
             SimpleNamespace(pid=11, usedGpuMemory=None)]
    names = {10: b"/usr/local/bin/ollama", 11: None}
    assert processes_from_nvml(found, names.get) == [
        GpuProcess(10, "ollama", 3072), GpuProcess(11, "pid 11", 0)]


def test_power_limit_outside_the_board_range_is_refused() -> None:
    check_power_limit(450, 100.0, 600.0)
    with pytest.raises(GpuProbeError, match=r"power_limit_w 700 is outside .*100–600 W"):
        check_power_limit(700, 100.0, 600.0)


def test_nvml_without_a_gpu_fails_with_one_line_naming_the_fix() -> None:
    with pytest.raises(GpuProbeError) as error:
        NvmlProbe(0)
    text = str(error.value)
    assert "\n" not in text
    assert text.startswith("NVML unavailable (")
    assert 'probe = "simulated"' in text


def test_open_probe_follows_the_config(tmp_path: Path) -> None:
    state = write(tmp_path / "gpu.json")
    probe = open_probe(GpuSettings(probe="simulated", simulated_state=str(state)))
    assert isinstance(probe, SimulatedProbe)
    with pytest.raises(GpuProbeError, match="NVML unavailable"):
        open_probe(GpuSettings(probe="nvml"))
