"""A whole watchdog run against real peers: restic (a real repository), a real private
dbus-daemon carrying a GpuMode1 stand-in, the router's /status stand-in on a unix socket,
a real llama-server (its /v1/models), the bench CSV, and the ntfy stand-in. Time and statvfs are
injected.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mushishi.services.watchdog import checks, gather
from mushishi.services.watchdog.app import Deps, run_watchdog
from mushishi.services.watchdog.checks import Status, UnitState
from mushishi.shared.config.loader import load_settings
from mushishi.shared.readings import ok
from mushishi.shared.tenant_confinement import TenantRecord, write_record
from tests.llama import LlamaServer, running_llama
from tests.paths import BINDIR
from tests.standins.bus import PrivateBus
from tests.standins.gpumode import GpuModeStandin
from tests.standins.ntfy import NtfyStandin
from tests.standins.router_status import RouterStatusStandin, status_document

PASSWORD = "watchdog test password"
LOCAL = UTC
WEDNESDAY = datetime(2026, 3, 11, 9, 0, tzinfo=LOCAL)


@pytest.fixture
def bus() -> Iterator[str]:
    with PrivateBus() as private:
        yield private.address


@dataclass
class World:
    config: Path
    state: Path
    backup_state: Path
    bench: Path
    router_socket: Path


def restic(repo: Path, *args: str) -> None:
    subprocess.run(["/usr/bin/restic", "--repo", str(repo), "--no-cache", *args], check=True,
                   capture_output=True, env={"RESTIC_PASSWORD": PASSWORD}, timeout=120)


def make_world(tmp_path: Path, ntfy_url: str, models_port: int) -> World:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_text("a\n")
    repo = tmp_path / "repo"
    restic(repo, "init")
    # The newest snapshot is ten days old: the watchdog must see that from restic itself,
    # whatever the runner's last.json says.
    restic(repo, "backup", "--tag", "mushishi", "--time", "2026-03-01 09:00:00", str(source))
    backup_state = tmp_path / "backup"
    backup_state.mkdir()
    (backup_state / "last.json").write_text(json.dumps({
        "outcome": "ok", "finished": "2026-03-01T09:01:00+00:00", "snapshot_ids": ["abcd"],
        "warnings": [], "errors": [],
        "verify": {"outcome": "failed", "mismatches": ["/data/x: SHA-256 differs"],
                   "error": None}}))
    bench = tmp_path / "results.csv"
    bench.write_text(
        "time,target,prompt_tokens,completion_tokens,seconds,tokens_per_s,gpu_power_w,"
        "gpu_temperature_c,regression\n"
        "2026-03-10T01:00:00Z,cpu,512,128,10.0,12.8,,,false\n"
        "2026-03-11T01:00:00Z,cpu,512,128,20.0,6.4,,,true\n")
    state = tmp_path / "watchdog"
    config = tmp_path / "mushishi.toml"
    router_socket = tmp_path / "router.sock"
    config.write_text(f"""
[router]
listen = ["127.0.0.1:4000", "unix:{router_socket}"]
egress_socket = "{tmp_path / 'egress.sock'}"
[ntfy]
url = "{ntfy_url}"
[cpu_floor]
host = "127.0.0.1"
port = {models_port}
alias = "nemotron-cpu-prism"
[watchdog]
state_dir = "{state}"
textfile_dir = "{tmp_path / 'textfile'}"
disk_mounts = ["/", "{tmp_path / 'not-mounted'}"]
bench_results = "{bench}"
cloud_share_max = 0.10
gpu_max_temperature_c = 85
[backup]
repository = "{repo}"
state_dir = "{backup_state}"
[[backup.sets]]
path = "{source}"
reason = "test"
""")
    return World(config, state, backup_state, bench, router_socket)


def full_disk(path: str) -> os.statvfs_result:
    if path != "/":
        raise FileNotFoundError(path)
    # 4 KiB blocks: 1000 total, 40 free, 30 available -> 960 / 990 = 97% used
    return os.statvfs_result((4096, 4096, 1000, 40, 30, 100, 50, 50, 0, 255))


@pytest.fixture
def misnamed_floor(llama_server_binary: Path, tiny_model: Path) -> Iterator[LlamaServer]:
    """A real llama-server serving the model under another name than the floor's alias."""
    with running_llama(llama_server_binary, tiny_model, "model.gguf") as server:
        yield server


async def test_a_run_reports_every_check_and_alerts_only_the_problems(
        tmp_path: Path, bus: str, ntfy: NtfyStandin, misnamed_floor: LlamaServer) -> None:
    world = make_world(tmp_path, ntfy.url, misnamed_floor.port)
    gpud = await GpuModeStandin(temperature_c=91, throttled=True).connect(bus)
    router = RouterStatusStandin(status_document({
        "personal": {"hour": 0.5, "day": 0.4, "requests_hour": 10, "requests_day": 100},
        "private": {"hour": 0.0, "day": 0.0, "requests_hour": 10, "requests_day": 100}}))
    await router.start(str(world.router_socket))
    settings = load_settings(world.config)
    # A tenant whose probe left the box, and an egress socket anyone may open.
    run_dir = tmp_path / "tenants"
    (run_dir / "vllm").mkdir(parents=True)
    write_record(run_dir / "vllm", TenantRecord(
        "vllm", "docker", False, "from container vllm: it left the box",
        WEDNESDAY.timestamp() - 1, 15.0, "192.0.2.1:9"))
    egress = socket.socket(socket.AF_UNIX)
    egress.bind(str(tmp_path / "egress.sock"))
    (tmp_path / "egress.sock").chmod(0o666)
    deps = Deps(now=lambda: WEDNESDAY, hostname="box", statvfs=full_disk,
                environ={"MUSHISHI_CREDENTIAL_RESTIC_PASSWORD": PASSWORD,
                         "MUSHISHI_CREDENTIAL_NTFY_TOPIC": "t"},
                system_bus_address=bus, tenants_run_dir=run_dir)
    try:
        assert await run_watchdog(settings, deps) == 0
    finally:
        gpud.disconnect()
        await router.stop()
        egress.close()
    last = json.loads((world.state / "last.json").read_text())
    by_name = {c["name"]: c for c in last["checks"]}
    expected = {
        "backup-age": "problem",          # 10 days old, read from restic
        "backup-result": "ok",
        "restore-verify": "problem",
        "backup-check": "missing-source",  # never ran
        "disk:/": "problem",
        f"disk:{tmp_path / 'not-mounted'}": "problem",
        # This private bus has no systemd: that is a problem, never "healthy".
        "unit:mushishi-router.service": "problem",
        "unit:mushishi-egress.service": "problem",
        "unit:mushishi-cpu-floor.service": "problem",
        "unit:mushishi-gpud.service": "problem",
        "unit:mushishi-sovereignty.service": "problem",
        "cpu-floor": "problem",
        "cloud-share": "problem",          # 20% of 200 requests
        "gpu": "problem",                  # 91 °C and throttled
        "bench": "problem",
        "sovereignty:config": "ok",
        "sovereignty:connect-time": "ok",
        "sovereignty:kernel": "ok",
        "sovereignty:tenants": "problem",
        "sovereignty:egress": "problem",
    }
    assert {name: c["status"] for name, c in by_name.items()} == expected
    assert "10.0 days old" in by_name["backup-age"]["detail"]
    assert "97.0% used" in by_name["disk:/"]["detail"]
    assert "91 °C" in by_name["gpu"]["detail"] and "throttling" in by_name["gpu"]["detail"]
    assert "20.0% of 200 requests" in by_name["cloud-share"]["detail"]
    assert "cpu at 6.4 tok/s" in by_name["bench"]["detail"]
    assert by_name["sovereignty:tenants"]["detail"] == (
        "not in force: tenant vllm: from container vllm: it left the box")
    assert by_name["sovereignty:egress"]["detail"].startswith(
        f"not in force: {tmp_path / 'egress.sock'} is root:root 0666: any process may open")
    assert "does not answer" in by_name["unit:mushishi-gpud.service"]["detail"]
    assert sorted(last["problems"]) == sorted(n for n, s in expected.items() if s == "problem")
    assert last["delivery"] == {"delivered": 2, "queued": 0, "last_error": None}
    titles = [m.title for m in ntfy.messages]
    assert titles == ["mushishi on box: 15 problems", "mushishi on box: weekly heartbeat"]
    assert "Not checked: backup-check" in ntfy.messages[0].message
    metrics = (tmp_path / "textfile" / "mushishi_watchdog.prom").read_text()
    assert 'mushishi_watchdog_check_status{check="gpu",status="problem"} 1.0' in metrics
    assert "mushishi_watchdog_problems 15.0" in metrics


async def test_absent_gpud_router_and_bench_are_missing_sources_never_healthy(
        tmp_path: Path, bus: str, ntfy: NtfyStandin) -> None:
    world = make_world(tmp_path, ntfy.url, 9)
    world.bench.unlink()
    settings = load_settings(world.config)
    deps = Deps(now=lambda: WEDNESDAY, hostname="box", statvfs=full_disk,
                environ={"MUSHISHI_CREDENTIAL_RESTIC_PASSWORD": PASSWORD},
                system_bus_address=bus, tenants_run_dir=tmp_path / "no-tenants")
    assert await run_watchdog(settings, deps) == 0
    last = json.loads((world.state / "last.json").read_text())
    by_name = {c["name"]: c for c in last["checks"]}
    for name in ("gpu", "cloud-share", "bench", "backup-check", "sovereignty:kernel"):
        assert by_name[name]["status"] == "missing-source", name
    # No tenant running and no egress socket: nothing can leak through them.
    assert by_name["sovereignty:tenants"] == {"name": "sovereignty:tenants", "status": "ok",
                                              "detail": "no tenant is running"}
    assert by_name["sovereignty:egress"]["status"] == "ok"
    assert "is not on the system bus" in by_name["gpu"]["detail"]
    assert "does not exist" in by_name["cloud-share"]["detail"]
    assert "run `mushishi bench`" in by_name["bench"]["detail"]
    # No topic credential: the alerts wait in the outbox and the result says why.
    assert last["delivery"]["queued"] == 2
    assert "ntfy.topic_credential" in last["delivery"]["last_error"]


async def test_wrong_restic_password_is_a_problem_not_a_missing_source(
        tmp_path: Path, bus: str, ntfy: NtfyStandin) -> None:
    world = make_world(tmp_path, ntfy.url, 9)
    settings = load_settings(world.config)
    deps = Deps(now=lambda: WEDNESDAY, hostname="box", statvfs=full_disk,
                environ={"MUSHISHI_CREDENTIAL_RESTIC_PASSWORD": "not-the-password-7"},
                system_bus_address=bus)
    await run_watchdog(settings, deps)
    last = json.loads((world.state / "last.json").read_text())
    age = next(c for c in last["checks"] if c["name"] == "backup-age")
    assert age["status"] == "problem" and "wrong password" in age["detail"]


async def test_cpu_floor_readiness_reads_the_alias_from_v1_models(
        llama_server_binary: Path, tiny_model: Path) -> None:
    """Real llama-servers: one serving the floor's alias, then one serving another name."""
    active = ok(UnitState("loaded", "active", "running"))
    with running_llama(llama_server_binary, tiny_model, "nemotron-cpu-prism") as server:
        url = f"{server.url}/models"
        models = await gather.models_served("127.0.0.1", server.port, 5)
        assert models.value() == ["nemotron-cpu-prism"]
        result = checks.cpu_floor("mushishi-cpu-floor.service", active, models,
                                  alias="nemotron-cpu-prism", url=url)
        assert result.status is Status.OK
    with running_llama(llama_server_binary, tiny_model, "model.gguf") as other:
        other_url = f"{other.url}/models"
        models = await gather.models_served("127.0.0.1", other.port, 5)
        result = checks.cpu_floor("mushishi-cpu-floor.service", active, models,
                                  alias="nemotron-cpu-prism", url=other_url)
        assert result.status is Status.PROBLEM and "'nemotron-cpu-prism'" in result.detail
    refused = await gather.models_served("127.0.0.1", server.port, 5)
    assert refused.failed


def test_the_console_script_runs_a_check_pass_and_exits_zero(tmp_path: Path, bus: str) -> None:
    world = make_world(tmp_path, "http://127.0.0.1:9", 9)
    result = subprocess.run(
        [f"{BINDIR}/mushishi-watchdog", "--config", str(world.config)], capture_output=True,
        text=True, timeout=300, cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "DBUS_SYSTEM_BUS_ADDRESS": bus,
             "MUSHISHI_CREDENTIAL_RESTIC_PASSWORD": PASSWORD,
             "MUSHISHI_CREDENTIAL_NTFY_TOPIC": "t"})
    assert result.returncode == 0, result.stderr
    last = json.loads((world.state / "last.json").read_text())
    assert {c["name"] for c in last["checks"]} >= {"backup-age", "gpu", "cpu-floor"}
    assert last["delivery"]["queued"] >= 1  # ntfy at port 9 is down: kept in the outbox
    assert "ntfy: ClientConnectorError" in result.stderr
    assert datetime.fromisoformat(last["time"]) > datetime.now(LOCAL) - timedelta(hours=1)
