"""`mushishi status`'s adapters against real peers: the real router in-process, a gpud
stand-in on a real private dbus-daemon, a llama.cpp stand-in, result files; a stopped or
hung source is named and costs at most its timeout."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dbus_fast.aio import MessageBus

from mushishi.ctl.status import gather
from mushishi.ctl.status.report import build_report
from mushishi.ctl.status.screen import render
from mushishi.services.egress.core import Usage
from mushishi.services.egress.ledger import Ledger
from mushishi.shared import dbus_names
from mushishi.shared.config import MushishiSettings, load_settings
from mushishi.shared.local_http import http_get
from mushishi.shared.tenant_confinement import TenantRecord, write_record
from tests.integration.router.harness import running_box
from tests.llama import LlamaServer, running_llama
from tests.standins.bus import PrivateBus
from tests.standins.gpumode import GpuModeStandin

NOW = datetime(2026, 3, 11, 9, 0, tzinfo=UTC)


def settings_for(tmp_path: Path, router_socket: str, floor_port: int) -> MushishiSettings:
    for name in ("backup", "watchdog", "firewall", "bench"):
        (tmp_path / name).mkdir(exist_ok=True)
    config = tmp_path / "status.toml"
    config.write_text(f"""
[router]
listen = ["127.0.0.1:4000", "unix:{router_socket}"]
[cpu_floor]
host = "127.0.0.1"
port = {floor_port}
alias = "nemotron-cpu-prism"
[backup]
state_dir = "{tmp_path}/backup"
[watchdog]
state_dir = "{tmp_path}/watchdog"
bench_results = "{tmp_path}/bench/results.csv"
[firewall]
state_dir = "{tmp_path}/firewall"
[bench]
results = "{tmp_path}/bench/results.csv"
""")
    return load_settings(config)


@pytest.fixture(scope="module")
def floor(llama_server_binary: Path, tiny_model: Path) -> Iterator[LlamaServer]:
    """A real llama-server serving the tiny model under the floor's alias."""
    with running_llama(llama_server_binary, tiny_model, "nemotron-cpu-prism") as server:
        yield server


async def test_collect_reads_every_source_that_answers(tmp_path: Path,
                                                       floor: LlamaServer) -> None:
    (tmp_path / "router").mkdir()
    run_dir = tmp_path / "tenants"  # one tenant running, its probe refused
    (run_dir / "vllm").mkdir(parents=True)
    write_record(run_dir / "vllm", TenantRecord(
        "vllm", "docker", True, "from container vllm: refused", NOW.timestamp() - 1, 15.0,
        "192.0.2.1:9"))
    async with running_box(tmp_path / "router") as box:
        settings = settings_for(tmp_path, box.unix_socket, floor.port)
        (tmp_path / "backup" / "last.json").write_text(json.dumps(
            {"finished": "2026-03-10T09:00:00+00:00", "outcome": "ok",
             "verify": {"outcome": "ok", "files_checked": 20}}))
        (tmp_path / "watchdog" / "last.json").write_text(json.dumps(
            {"time": "2026-03-11T06:00:00+00:00", "problems": [], "checks": [
                {"name": "gpu", "status": "ok", "detail": "55 °C"}]}))
        with PrivateBus() as private:
            gpud = await GpuModeStandin(temperature_c=58).connect(private.address)
            try:
                readings = await gather.collect(settings, now=NOW, limit_s=2.0,
                                                bus_address=private.address,
                                                tenants_run_dir=run_dir)
            finally:
                gpud.disconnect()
    status = {name: reading.status for name, reading in readings.items()}
    assert status == {"systemd": "down", "gpud": "ok", "router": "ok", "tenants": "ok",
                      "switches": "down", "cpu-floor": "ok", "budgets": "missing",
                      "backup": "ok", "watchdog": "ok", "firewall": "ok",
                      "bench": "missing"}, readings
    assert readings["tenants"].data.tenants == {"vllm": True}
    assert readings["gpud"].data.temperature_c == 58
    assert readings["router"].data.profiles["private"].tier == "T1"
    assert readings["cpu-floor"].data["models"] == ["nemotron-cpu-prism"]
    assert readings["budgets"].detail == (
        "no budget ledger yet (no cloud request has gone through the egress)")
    # A private session bus has no systemd: said, not hidden.
    assert "systemd did not list the units" in readings["systemd"].detail
    report = build_report(readings, NOW, "box")
    screen = render(report)
    assert "sovereignty: config ✓, connect-time ✓, kernel ?, tenants ✓" in screen
    assert "tenants   vllm ✓ from container vllm: refused" in screen
    assert "58 °C" in screen and "serving nemotron-cpu-prism" in screen
    assert report.data["unavailable"] == ["systemd", "switches"]


class HungGpud:
    """Owns io.mushishi.GpuMode1 and never answers a call (a wedged daemon)."""

    def __init__(self) -> None:
        self.bus: MessageBus | None = None
        self.calls = 0

    async def start(self, address: str) -> None:
        self.bus = await MessageBus(bus_address=address).connect()

        def swallow(message: object) -> bool:
            if getattr(message, "destination", None) == dbus_names.BUS_NAME:
                self.calls += 1
                return True  # handled: no reply, ever
            return False

        self.bus.add_message_handler(swallow)
        await self.bus.request_name(dbus_names.BUS_NAME)


async def test_a_hung_router_and_a_hung_gpud_cost_only_the_timeout(
        tmp_path: Path, floor: LlamaServer) -> None:
    socket_path = str(tmp_path / "router.sock")
    connections: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await asyncio.sleep(3600)

    server = await asyncio.start_unix_server(never_answer, socket_path)
    settings = settings_for(tmp_path, socket_path, floor.port)
    with PrivateBus() as private:
        hung = HungGpud()
        await hung.start(private.address)
        started = time.monotonic()
        readings = await gather.collect(settings, now=NOW, limit_s=0.3,
                                        bus_address=private.address)
        elapsed = time.monotonic() - started
        assert hung.bus is not None
        hung.bus.disconnect()
    server.close()
    assert connections, "the router stand-in was never asked"
    assert hung.calls >= 1, "the hung gpud was never asked"
    # Without the per-source timeout a hung socket waits forever and a D-Bus call 25 s; the
    # bound here leaves room for a loaded machine.
    assert elapsed < 3.0, elapsed
    for name, what in (("router", "mushishi-router"), ("gpud", "mushishi-gpud")):
        reading = readings[name]
        assert reading.status == "down"
        assert reading.detail.startswith("did not answer within 0.3 s")
        assert what in reading.detail
    assert readings["cpu-floor"].status == "ok"  # the rest is still there


async def test_stopped_daemons_are_named_with_what_to_check(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, str(tmp_path / "absent.sock"), 9)
    with PrivateBus() as private:
        readings = await gather.collect(settings, now=NOW, limit_s=2.0,
                                        bus_address=private.address)
    assert readings["router"].status == "down"
    assert readings["router"].detail == (
        f"the router's socket {tmp_path}/absent.sock does not exist (is "
        "mushishi-router.socket running? `systemctl status mushishi-router.socket`)")
    assert readings["gpud"].status == "down"
    assert "mushishi-gpud is not on the system bus" in readings["gpud"].detail
    assert readings["cpu-floor"].status == "down"
    assert "connection refused" in readings["cpu-floor"].detail


async def test_no_bus_at_all_is_one_clear_line(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, str(tmp_path / "absent.sock"), 9)
    readings = await gather.collect(settings, now=NOW, limit_s=1.0,
                                    bus_address=f"unix:path={tmp_path}/no-bus")
    for name in ("systemd", "gpud"):
        assert readings[name].status == "down"
        assert readings[name].detail.startswith("cannot connect to the system bus")


KIMI = """
[backends.kimi]
url = "https://integrate.api.nvidia.com/v1"
model = "moonshotai/kimi-k2.6"
api_key_credential = "ngc-api-key"
budget = { requests_per_day = 1000, tokens_per_day = 1000000 }
"""


def ledger_settings(tmp_path: Path) -> MushishiSettings:
    config = tmp_path / "mushishi.toml"
    config.write_text(KIMI + f'[egress]\nstate_dir = "{tmp_path}/egress"\n')
    return load_settings(config)


async def test_budgets_are_read_from_the_real_egress_ledger(tmp_path: Path) -> None:
    settings = ledger_settings(tmp_path)
    missing_ledger = await gather.read_budgets(settings, NOW)
    assert missing_ledger.status == "missing"
    assert missing_ledger.detail.startswith("no budget ledger yet")
    # The egress's own ledger, written as the daemon writes it: three answered requests.
    ledger = Ledger(settings.egress.state_dir, {"kimi": None}, clock=lambda: NOW)
    ledger.open()
    for number in range(3):
        reservation = await ledger.reserve("kimi", f"request-{number}", 40)
        _, written = ledger.settle(reservation, Usage(prompt_tokens=40, completion_tokens=60))
        await written
    await ledger.close()
    reading = await gather.read_budgets(settings, NOW)
    assert reading.status == "ok", reading
    assert reading.data["kimi"]["requests_used"] == 3
    assert reading.data["kimi"]["tokens_used"] == 300
    assert "kimi 3/1000 requests" in render(build_report({"budgets": reading}, NOW, "box"))


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory another user can traverse (pytest's tmp_path lives under a 0700 one)."""
    directory = Path(tempfile.mkdtemp(prefix="mushishi-status-", dir="/var/tmp"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory)


def test_budgets_unreadable_by_the_caller_is_an_error_naming_the_directory(
        public_dir: Path) -> None:
    tmp_path = public_dir
    settings = ledger_settings(tmp_path)
    (tmp_path / "mushishi.toml").chmod(0o644)
    ledger = Ledger(settings.egress.state_dir, {"kimi": None})
    ledger.open()
    asyncio.run(ledger.close())
    Path(settings.egress.state_dir).chmod(0o700)  # as the egress unit leaves it
    script = ("import sys, datetime\n"
              "from mushishi.shared.config import load_settings\n"
              "from mushishi.ctl.status import gather\n"
              "reading = gather._budgets(load_settings(sys.argv[1]), "
              "datetime.datetime.now(datetime.UTC))\n"
              "print(reading.status, reading.detail)\n")
    result = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                             sys.executable, "-c", script, str(tmp_path / "mushishi.toml")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("error permission denied on the budget ledger in "
                                    f"{settings.egress.state_dir}"), result.stdout


async def test_http_get_reads_chunked_and_length_delimited_answers(tmp_path: Path) -> None:
    from aiohttp import web

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in (b'{"data": [', b'{"id": "a"}', b", ", b'{"id": "b"}]}'):
            await response.write(part)
        await response.write_eof()
        return response

    async def whole(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "c"}]})

    app = web.Application()
    app.router.add_get("/v1/models", chunked)
    app.router.add_get("/status", whole)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    unix = web.UnixSite(runner, str(tmp_path / "s.sock"))
    await unix.start()
    try:
        status, body = await http_get("/v1/models", host="127.0.0.1", port=port)
        assert status == 200 and json.loads(body) == {"data": [{"id": "a"}, {"id": "b"}]}
        reading = await gather.read_cpu_floor("127.0.0.1", port, "b")
        assert reading.data == {"alias": "b", "models": ["a", "b"]}
        status, body = await http_get("/status", unix_socket=str(tmp_path / "s.sock"))
        assert status == 200 and json.loads(body) == {"data": [{"id": "c"}]}
    finally:
        await runner.cleanup()
