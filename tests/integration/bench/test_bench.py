"""`mushishi bench` against a real llama-server (tiny model): directly, through the real
router, and with gpud's GPU readings from a stand-in on a private bus; the watchdog and
`mushishi status` read what it writes."""

from __future__ import annotations

import csv
import os
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from mushishi.ctl.status.report import build_report
from mushishi.services.bench.app import run_bench
from mushishi.services.bench.core import COLUMNS
from mushishi.services.watchdog.checks import Status, bench
from mushishi.shared.config import load_settings
from mushishi.shared.readings import ok, read_bench_rows
from tests.llama import LlamaServer
from tests.paths import BINDIR
from tests.ports import free_port
from tests.standins.bus import PrivateBus
from tests.standins.gpumode import GpuModeStandin

MUSHISHI = str(Path(BINDIR) / "mushishi")


def write_config(tmp_path: Path, llama: LlamaServer, *, router_port: int = 4000,
                 extra: str = "") -> Path:
    results = tmp_path / "bench" / "results.csv"
    config = tmp_path / "mushishi.toml"
    config.write_text(f"""
[router]
listen = ["127.0.0.1:{router_port}", "unix:{tmp_path}/router.sock"]
egress_socket = "{tmp_path}/egress.sock"
state_dir = "{tmp_path}/router-state"
unix_peers = {{ "{os.getuid()}" = ["private"] }}
probe_interval_s = 0.2

[backends.cpu]
url = "{llama.url}"
model = "{llama.alias}"

[backends.gpu]
url = "http://127.0.0.1:9/v1"
model = "gpu-model"
modes = ["forensic"]

[profiles.private]
tier = "T1"
chain = ["cpu"]

[bench]
results = "{results}"
textfile_dir = "{tmp_path}/textfiles"
max_tokens = 32

[watchdog]
bench_results = "{results}"
{extra}
""")
    return config


def bench_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MUSHISHI_")}
    return subprocess.run([MUSHISHI, "bench", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=120, env=environment,
                          check=False)


def rows(tmp_path: Path) -> list[dict[str, str]]:
    with (tmp_path / "bench" / "results.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_bench_of_a_backend_appends_rows_that_the_watchdog_and_status_read(
        tmp_path: Path, llama: LlamaServer) -> None:
    config = write_config(tmp_path, llama)
    first = bench_cli(config, "--backend", "cpu")
    assert first.returncode == 0, first.stderr
    assert "backend:cpu → cpu" in first.stdout and "first run" in first.stdout
    [row] = rows(tmp_path)
    assert list(row) == list(COLUMNS)
    assert row["target"] == "backend:cpu" and row["backend"] == "cpu"
    assert int(row["completion_tokens"]) > 0 and int(row["prompt_tokens"]) > 0
    assert float(row["tokens_per_s"]) > 0 and row["regression"] == "false"
    assert datetime.fromisoformat(row["time"]).tzinfo is not None
    textfile = (tmp_path / "textfiles" / "mushishi_bench.prom").read_text()
    assert 'mushishi_bench_tokens_per_second{backend="cpu",target="backend:cpu"}' in textfile

    path = tmp_path / "bench" / "results.csv"
    assert bench(read_bench_rows(path)).status is Status.OK
    # Earlier runs ten times faster: the next run is a regression, for the watchdog too.
    fast = {**row, "tokens_per_s": f"{float(row['tokens_per_s']) * 10:.2f}",
            "time": "2026-01-01T00:00:00+00:00"}
    lines = path.read_text().splitlines()
    header, existing = lines[0], lines[1:]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
        handle.write(header + "\n")
        for _ in range(3):
            writer.writerow(fast)
        handle.write("\n".join(existing) + "\n")
    slow = bench_cli(config, "--backend", "cpu", "--fail-on-regression")
    assert slow.returncode == 3, slow.stdout + slow.stderr
    assert "REGRESSION" in slow.stdout
    assert rows(tmp_path)[-1]["regression"] == "true"
    verdict = bench(read_bench_rows(path))
    assert verdict.status is Status.PROBLEM and "backend:cpu" in verdict.detail
    report = build_report({"bench": ok(rows(tmp_path))}, datetime.now(UTC), "box")
    assert report.data["bench"]["backend:cpu (cpu)"]["regression"] is True
    assert any("bench: backend:cpu (cpu) regressed" in p for p in report.problems)


def test_bench_of_a_profile_goes_through_the_router_and_records_who_answered(
        tmp_path: Path, llama: LlamaServer) -> None:
    port = free_port()
    config = write_config(tmp_path, llama, router_port=port)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MUSHISHI_")}
    router = subprocess.Popen([str(Path(BINDIR) / "mushishi-router"), "--config", str(config)],
                              env=environment, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "router.sock").exists():
            assert router.poll() is None, router.stderr.read().decode() if router.stderr else ""
            assert time.monotonic() < deadline, "the router did not start"
            time.sleep(0.05)
        result = bench_cli(config, "--profile", "private")  # no key: mapped by uid
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        router.terminate()
        router.wait(timeout=30)
    [row] = rows(tmp_path)
    assert row["target"] == "profile:private"
    assert row["backend"] == "cpu"  # from the router's X-Mushishi-Backend


def test_unknown_and_cloud_targets_are_refused_with_their_reason(
        tmp_path: Path, llama: LlamaServer) -> None:
    config = write_config(tmp_path, llama, extra="""
[backends.kimi]
url = "https://integrate.api.nvidia.com/v1"
model = "kimi"
api_key_credential = "ngc-api-key"
""")
    result = bench_cli(config, "--backend", "kimi", "--backend", "nope")
    assert result.returncode == 1
    assert "backend:kimi not measured: backend 'kimi' is not local" in result.stderr
    assert "backend:nope not measured: unknown backend 'nope'" in result.stderr
    assert not (tmp_path / "bench" / "results.csv").exists()


async def test_gpu_readings_come_from_gpud_and_backends_of_other_modes_are_skipped(
        tmp_path: Path, llama: LlamaServer) -> None:
    settings = load_settings(write_config(tmp_path, llama))
    with PrivateBus() as private:
        gpud = await GpuModeStandin(temperature_c=66).connect(private.address)
        try:
            outcome = await run_bench(
                settings, [], results_path=tmp_path / "bench" / "results.csv",
                textfile_dir=None, api_key=None, max_tokens=16, repeats=1,
                bus_address=private.address)
        finally:
            gpud.disconnect()
    assert [s.target.label for s in outcome.skipped] == ["backend:gpu"]  # forensic only
    assert "GPU mode is off" in outcome.skipped[0].reason
    assert outcome.failed == []
    [result] = outcome.results
    assert result.row["target"] == "backend:cpu"
    assert result.row["gpu_power_w"] == "20.0"
    assert result.row["gpu_temperature_c"] == "66"
    assert result.row["gpu_mode"] == "off"


def test_a_backend_that_does_not_answer_fails_naming_where_it_was_asked(
        tmp_path: Path, llama: LlamaServer) -> None:
    config = write_config(tmp_path, llama)
    # No gpud here, so the GPU mode is unknown and the gpu backend is tried: nothing listens.
    result = bench_cli(config, "--backend", "gpu")
    assert result.returncode == 1
    assert "backend:gpu not measured: cannot reach http://127.0.0.1:9/v1/chat/completions" \
        in result.stderr
    assert not (tmp_path / "bench" / "results.csv").exists() or rows(tmp_path) == []
