"""Adapters that read each source for `mushishi status`, concurrently, each within a short
timeout, so one stopped or hung daemon costs at most that timeout and hides nothing else.

Nothing here blocks the event loop: HTTP is the shared minimal client on asyncio streams
(the router's /status through shared/router_status.py), D-Bus is the shared gpud and systemd
clients (imported when the bus is first used: `mushishi status` pays for dbus-fast only
then), and file reads and the egress ledger run in daemon threads (abandoned, not waited
for, if they hang).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mushishi.ctl.status.report import ALWAYS_ON, TIMERS
from mushishi.shared.config.observability import bench_results
from mushishi.shared.config.router import connect_host, unix_listen_path
from mushishi.shared.local_http import served_models
from mushishi.shared.readings import (
    Reading,
    down,
    error,
    missing,
    ok,
    read_bench_rows,
    read_json_object,
    within,
)
from mushishi.shared.router_status import read_status
from mushishi.shared.tenant_confinement import TENANTS_RUN_DIR, read_tenants_layer

if TYPE_CHECKING:
    from dbus_fast.aio import MessageBus

T = TypeVar("T")


# -- running things with a deadline -------------------------------------------------------

def in_thread(function: Callable[..., T], *args: Any) -> Awaitable[T]:
    """Run a blocking call in a daemon thread: if it hangs, the command still exits."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, failure: BaseException | None) -> None:
        if future.done():
            return
        if failure is not None:
            future.set_exception(failure)
        else:
            future.set_result(result)

    def work() -> None:
        try:
            result, failure = function(*args), None
        except BaseException as caught:  # handed to the awaiting task
            result, failure = None, caught
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle, result, failure)

    threading.Thread(target=work, daemon=True, name="mushishi-status-read").start()
    return future


async def timed(name: str, reader: Awaitable[Reading[Any]], limit_s: float, hung: str
                ) -> tuple[str, Reading[Any]]:
    """The named reading, with its elapsed time; `down(hung)` when it exceeds `limit_s`."""
    return name, await within(limit_s, reader, hung)


# -- HTTP ----------------------------------------------------------------------------------

async def read_cpu_floor(host: str, port: int, alias: str) -> Reading[dict[str, Any]]:
    """Which models llama-server lists on /v1/models (readiness: the alias is among them)."""
    models = await served_models(connect_host(host), port)
    if models.status != "ok":
        return models
    return ok({"alias": alias, "models": models.value()})


# -- D-Bus ---------------------------------------------------------------------------------

async def read_gpud(bus: MessageBus | Reading[Any]) -> Reading[Any]:
    """Every property of gpud's io.mushishi.GpuMode1."""
    if isinstance(bus, Reading):
        return bus
    from mushishi.shared.gpumode import GpuModeClient, read_properties

    return await read_properties(GpuModeClient(bus))


def _usec_time(value: int | None) -> str | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value / 1e6, UTC).isoformat(timespec="seconds")


async def read_systemd(bus: MessageBus | Reading[Any]) -> Reading[dict[str, Any]]:
    """States of the mushishi units (failed ones included), status lines, timers' next runs."""
    if isinstance(bus, Reading):
        return bus
    from mushishi.shared.bus import BusError
    from mushishi.shared.systemd import SystemdClient

    systemd = SystemdClient(bus)
    try:
        listed = await systemd.list_units(["mushishi*"])
        always_on, timers = await asyncio.gather(
            systemd.statuses(ALWAYS_ON, every_status_text=True),
            systemd.timers(sorted({*TIMERS, *(u for u in listed if u.endswith(".timer"))})))
    except BusError as caught:
        return down(f"systemd did not list the units: {caught.one_line()}")
    units: dict[str, dict[str, Any]] = {
        name: {"load": unit.load_state, "active": unit.active_state, "sub": unit.sub_state}
        for name, unit in listed.items()}
    for name, timer in timers.items():
        units.setdefault(name, {"load": timer.load_state, "active": timer.active_state,
                                "sub": timer.sub_state})
    for name, unit in always_on.items():
        units[name] = {"load": unit.load_state, "active": unit.active_state,
                       "sub": unit.sub_state}
        if unit.load_state == "loaded":
            units[name]["status_text"] = unit.status_text
    return ok({"units": units, "timers": {
        name: {"active": timer.active_state, "next": _usec_time(timer.next_elapse_usec),
               "last": _usec_time(timer.last_trigger_usec)} if timer.load_state == "loaded"
        else {"active": timer.load_state or "not-found", "next": None, "last": None}
        for name, timer in timers.items()}})


async def read_disabled_checks(bus: MessageBus | Reading[Any]) -> Reading[list[Any]]:
    """Test-only switches (MUSHISHI_TEST_*) systemd would hand to a unit, with where each
    is set: the manager's environment, or an always-on unit's Environment= (the unit file
    or a drop-in, found by reading them) or EnvironmentFile=."""
    if isinstance(bus, Reading):
        return bus
    from mushishi.shared.bus import BusError
    from mushishi.shared.disabled_checks import locate
    from mushishi.shared.systemd import SystemdClient

    systemd = SystemdClient(bus)
    try:
        manager, units = await asyncio.gather(systemd.manager_environment(),
                                              systemd.environments(ALWAYS_ON))
    except BusError as caught:
        return down(f"systemd did not show the units' environment: {caught.one_line()}")
    return ok(await in_thread(locate, manager, units, _text_or_none))


def _text_or_none(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


# -- files ---------------------------------------------------------------------------------

async def read_tenants(run_dir: Path, now: datetime) -> Reading[Any]:
    """The tenants sovereignty layer from their published probes (the shared reader)."""
    return ok(await in_thread(partial(read_tenants_layer, now=now.timestamp()), run_dir))


def _json_files(directory: str, names: dict[str, str]) -> Reading[dict[str, Any]]:
    """Several result files of one state directory; an absent one reads None."""
    found: dict[str, Any] = {}
    for key, name in names.items():
        reading = read_json_object(Path(directory) / name, "")
        if reading.status == "missing":
            found[key] = None
        elif reading.status != "ok":
            return reading
        else:
            found[key] = reading.data
    return ok(found)


async def read_backup(state_dir: str) -> Reading[dict[str, Any]]:
    """backup's last.json and check.json (absent before the first run)."""
    return await in_thread(_json_files, state_dir, {"last": "last.json", "check": "check.json"})


async def read_watchdog(state_dir: str) -> Reading[dict[str, Any]]:
    """The watchdog's last.json."""
    return await in_thread(read_json_object, Path(state_dir) / "last.json",
                           f"the watchdog has not run yet (no {state_dir}/last.json; "
                           "`systemctl start mushishi-watchdog`)")


async def read_firewall(state_dir: str) -> Reading[dict[str, Any]]:
    """The firewall's last.json and pending.json."""
    return await in_thread(_json_files, state_dir, {"last": "last.json",
                                                    "pending": "pending.json"})


async def read_bench(path: str) -> Reading[list[dict[str, str]]]:
    """The newest rows of the bench CSV."""
    return await in_thread(read_bench_rows, Path(path))


# -- the egress ledger ---------------------------------------------------------------------

def _budgets(settings: Any, now: datetime) -> Reading[Any]:
    # Imported here, not at the top: `mushishi status` stays fast when the screen is cut short.
    from mushishi.services.egress.ledger import read_budgets

    try:
        budgets = read_budgets(settings, now)
    except FileNotFoundError:
        return missing("no budget ledger yet (no cloud request has gone through the egress)")
    except PermissionError:
        return error(f"permission denied on the budget ledger in {settings.egress.state_dir} "
                     "(run as root)")
    except Exception as caught:  # the ledger is another daemon's file: report, never crash
        return error(f"cannot read the budget ledger: {type(caught).__name__}: {caught}")
    return ok(budgets)


async def read_budgets(settings: Any, now: datetime) -> Reading[Any]:
    """Cloud budgets from the egress ledger (read-only; works while the egress is down)."""
    return await in_thread(_budgets, settings, now)


# -- all of it -------------------------------------------------------------------------------

async def collect(settings: Any, *, now: datetime, limit_s: float,
                  bus_address: str | None = None,
                  tenants_run_dir: Path = TENANTS_RUN_DIR) -> dict[str, Reading[Any]]:
    """Read every source concurrently; each gets `limit_s` seconds, bus connection included."""

    async def bus() -> MessageBus | Reading[Any]:
        from mushishi.shared.bus import connect

        try:
            return await connect(bus_address)
        except Exception as caught:  # dbus-fast raises OSError, AuthError, ValueError…
            return down(f"cannot connect to the system bus ({caught}; is dbus running?)")

    connection = asyncio.ensure_future(bus())

    async def on_bus(reader: Callable[[Any], Awaitable[Reading[Any]]]) -> Reading[Any]:
        return await reader(await connection)

    floor = settings.cpu_floor
    jobs = [
        timed("systemd", on_bus(read_systemd), limit_s, "is systemd or dbus overloaded?"),
        timed("gpud", on_bus(read_gpud), limit_s,
              "hung? `systemctl status mushishi-gpud`"),
        timed("router", read_status(unix_listen_path(settings.router.listen)), limit_s,
              "hung? `systemctl status mushishi-router`"),
        timed("tenants", read_tenants(tenants_run_dir, now), limit_s,
              f"is {tenants_run_dir} readable?"),
        timed("switches", on_bus(read_disabled_checks), limit_s,
              "is systemd or dbus overloaded?"),
        timed("cpu-floor", read_cpu_floor(floor.host, floor.port, floor.alias), limit_s,
              "hung or loading? `systemctl status mushishi-cpu-floor`"),
        timed("budgets", read_budgets(settings, now), limit_s,
              f"the ledger in {settings.egress.state_dir} is locked?"),
        timed("backup", read_backup(settings.backup.state_dir), limit_s,
              f"is {settings.backup.state_dir} on a hung disk?"),
        timed("watchdog", read_watchdog(settings.watchdog.state_dir), limit_s,
              f"is {settings.watchdog.state_dir} on a hung disk?"),
        timed("firewall", read_firewall(settings.firewall.state_dir), limit_s,
              f"is {settings.firewall.state_dir} on a hung disk?"),
        timed("bench", read_bench(bench_results(settings)), limit_s,
              f"is {bench_results(settings)} on a hung disk?"),
    ]
    try:
        return dict(await asyncio.gather(*jobs))
    finally:
        if connection.done() and not isinstance(result := connection.result(), Reading):
            result.disconnect()
        else:
            connection.cancel()
