"""Adapters that read each source for `mushishi status`, concurrently, each within a short
timeout, so one stopped or hung daemon costs at most that timeout and hides nothing else.

Nothing here blocks the event loop: HTTP is a minimal client on asyncio streams (a GET with
`Connection: close`), D-Bus is dbus-fast, and file reads and the egress ledger run in daemon
threads (abandoned, not waited for, if they hang).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from mushishi.ctl.status.core import (
    ALWAYS_ON,
    TIMERS,
    Reading,
    down,
    error,
    missing,
    ok,
)
from mushishi.shared import dbus_names
from mushishi.shared.config.observability import bench_results
from mushishi.shared.config.router import unix_listen_path

T = TypeVar("T")

PROPERTIES = "org.freedesktop.DBus.Properties"
UNIT_INTERFACE = dbus_names.SYSTEMD_UNIT_INTERFACE
SERVICE_INTERFACE = "org.freedesktop.systemd1.Service"
TIMER_INTERFACE = "org.freedesktop.systemd1.Timer"
NO_OWNER = ("org.freedesktop.DBus.Error.ServiceUnknown",
            "org.freedesktop.DBus.Error.NameHasNoOwner")
USEC_NEVER = (0, 2**64 - 1)
HTTP_LIMIT = 8 * 1024 * 1024
BENCH_TAIL_BYTES = 256 * 1024


class HttpError(Exception):
    """A malformed or oversized HTTP answer."""


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


async def timed(name: str, reader: Awaitable[Reading], limit_s: float, hung: str
                ) -> tuple[str, Reading]:
    """The reading, with its elapsed time; `down(hung)` when it exceeds `limit_s`."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(limit_s):
            reading = await reader
    except TimeoutError:
        reading = down(f"did not answer within {limit_s:g} s ({hung})")
    except Exception as caught:  # an adapter bug must not hide the other sources
        reading = error(f"{type(caught).__name__}: {caught}")
    elapsed = time.perf_counter() - started
    return name, Reading(reading.status, reading.data, reading.detail, elapsed)


# -- HTTP ----------------------------------------------------------------------------------

async def http_get(path: str, *, unix_socket: str | None = None, host: str | None = None,
                   port: int | None = None) -> tuple[int, bytes]:
    """GET `path` over a unix socket or TCP; (status, body)."""
    if unix_socket is not None:
        reader, writer = await asyncio.open_unix_connection(unix_socket)
        host_header = "localhost"
    else:
        assert host is not None and port is not None
        reader, writer = await asyncio.open_connection(host, port)
        host_header = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nAccept: application/json"
                     "\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise HttpError("response headers too large") from None
        except asyncio.IncompleteReadError:
            raise HttpError("the connection closed before a response") from None
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise HttpError(f"not an HTTP response: {status_line[:80]!r}")
        headers = {}
        for line in header_lines:
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await _read_chunked(reader)
        elif "content-length" in headers:
            length = int(headers["content-length"])
            if length > HTTP_LIMIT:
                raise HttpError(f"response of {length} bytes is too large")
            body = await reader.readexactly(length)
        else:
            body = await reader.read(HTTP_LIMIT)
        return int(parts[1]), body
    finally:
        writer.close()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)
        if len(body) > HTTP_LIMIT:
            raise HttpError("response too large")


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        raise HttpError(f"{what} is not JSON") from None
    if not isinstance(data, dict):
        raise HttpError(f"{what} is not a JSON object")
    return data


async def read_router(socket_path: str | None) -> Reading:
    """The router's GET /status over its unix socket."""
    if socket_path is None:
        return missing("router.listen has no unix: address to read /status from")
    try:
        status, body = await http_get("/status", unix_socket=socket_path)
    except FileNotFoundError:
        return down(f"no router socket at {socket_path} (`systemctl status "
                    "mushishi-router.socket`)")
    except PermissionError:
        return error(f"permission denied on {socket_path} (run as root or as a member of "
                     "group mushishi)")
    except ConnectionRefusedError:
        return down(f"nothing accepts connections on {socket_path} (`systemctl status "
                    "mushishi-router.socket`)")
    except (OSError, HttpError, asyncio.IncompleteReadError, ValueError) as caught:
        return down(f"cannot read the router's status on {socket_path}: {caught}")
    if status != 200:
        return down(f"the router answered {status} to GET /status")
    try:
        return ok(_json_object(body, "the router's /status"))
    except HttpError as caught:
        return error(str(caught))


async def read_cpu_floor(host: str, port: int, alias: str) -> Reading:
    """Which models llama-server lists on /v1/models (readiness: the alias is among them)."""
    connect = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    where = f"http://{connect}:{port}/v1/models"
    try:
        status, body = await http_get("/v1/models", host=connect, port=port)
    except ConnectionRefusedError:
        return down(f"llama-server does not answer on {where} (connection refused; "
                    "`systemctl status mushishi-cpu-floor`)")
    except (OSError, HttpError, asyncio.IncompleteReadError, ValueError) as caught:
        return down(f"GET {where} failed: {caught}")
    if status != 200:
        return down(f"GET {where} answered {status} (loading?)")
    try:
        data = _json_object(body, where)
    except HttpError as caught:
        return error(str(caught))
    names: set[str] = set()
    for entry in data.get("data") or []:
        if isinstance(entry, dict) and entry.get("id"):
            names.add(str(entry["id"]))
    for entry in data.get("models") or []:
        if isinstance(entry, dict):
            names.update(str(entry[k]) for k in ("name", "model") if entry.get(k))
    return ok({"alias": alias, "models": sorted(names)})


# -- D-Bus ---------------------------------------------------------------------------------

async def connect_bus(address: str | None) -> Any:
    """A connection to the system bus (or `address`); raises OSError and friends."""
    from dbus_fast import BusType
    from dbus_fast.aio import MessageBus

    bus = MessageBus(bus_address=address) if address else MessageBus(bus_type=BusType.SYSTEM)
    return await bus.connect()


async def _call(bus: Any, destination: str, path: str, interface: str, member: str,
                signature: str = "", body: list[Any] | None = None) -> Any:
    from dbus_fast import Message

    return await bus.call(Message(destination=destination, path=path, interface=interface,
                                  member=member, signature=signature, body=body or []))


def _is_error(reply: Any) -> bool:
    from dbus_fast import MessageType

    return reply is None or reply.message_type == MessageType.ERROR


def _plain(value: Any) -> Any:
    from dbus_fast import Variant

    if isinstance(value, Variant):
        value = value.value
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _error_text(reply: Any) -> str:
    detail = reply.body[0] if reply is not None and reply.body else ""
    return f"{getattr(reply, 'error_name', 'no reply')}: {detail}"


async def read_gpud(bus: Any) -> Reading:
    """Every property of io.mushishi.GpuMode1."""
    if isinstance(bus, Reading):
        return bus
    reply = await _call(bus, dbus_names.BUS_NAME, dbus_names.OBJECT_PATH, PROPERTIES, "GetAll",
                        "s", [dbus_names.INTERFACE])
    if _is_error(reply):
        if reply is not None and reply.error_name in NO_OWNER:
            return down(f"mushishi-gpud is not on the system bus ({dbus_names.BUS_NAME} has "
                        "no owner; `systemctl status mushishi-gpud`)")
        return down(f"reading {dbus_names.BUS_NAME} failed: {_error_text(reply)}")
    return ok({name: _plain(value) for name, value in reply.body[0].items()})


async def _get(bus: Any, path: str, interface: str, name: str) -> Any:
    reply = await _call(bus, dbus_names.SYSTEMD_BUS_NAME, path, PROPERTIES, "Get", "ss",
                        [interface, name])
    return None if _is_error(reply) else _plain(reply.body[0])


def _usec_time(value: Any) -> str | None:
    if not isinstance(value, int) or value in USEC_NEVER:
        return None
    return datetime.fromtimestamp(value / 1e6, UTC).isoformat(timespec="seconds")


async def read_systemd(bus: Any) -> Reading:
    """States of the mushishi units (failed ones included), status lines, timers' next runs."""
    if isinstance(bus, Reading):
        return bus
    reply = await _call(bus, dbus_names.SYSTEMD_BUS_NAME, dbus_names.SYSTEMD_OBJECT_PATH,
                        dbus_names.SYSTEMD_MANAGER_INTERFACE, "ListUnitsByPatterns", "asas",
                        [[], ["mushishi*"]])
    if _is_error(reply):
        return down(f"systemd did not list the units: {_error_text(reply)}")
    units: dict[str, dict[str, Any]] = {}
    paths: dict[str, str] = {}
    for name, _description, load, active, sub, _following, path, *_ in reply.body[0]:
        units[name] = {"load": load, "active": active, "sub": sub}
        paths[name] = path

    async def load_unit(name: str) -> None:
        loaded = await _call(bus, dbus_names.SYSTEMD_BUS_NAME, dbus_names.SYSTEMD_OBJECT_PATH,
                             dbus_names.SYSTEMD_MANAGER_INTERFACE, "LoadUnit", "s", [name])
        if _is_error(loaded):
            units[name] = {"load": "error", "active": "unknown", "sub": ""}
            return
        path = loaded.body[0]
        load, active, sub = await asyncio.gather(
            *(_get(bus, path, UNIT_INTERFACE, p) for p in ("LoadState", "ActiveState",
                                                           "SubState")))
        units[name] = {"load": load or "", "active": active or "", "sub": sub or ""}
        paths[name] = path

    await asyncio.gather(*(load_unit(n) for n in (*ALWAYS_ON, *TIMERS) if n not in units))

    async def status_text(name: str) -> None:
        if units[name].get("load") == "loaded":
            text = await _get(bus, paths[name], SERVICE_INTERFACE, "StatusText")
            units[name]["status_text"] = text or ""

    timers: dict[str, dict[str, Any]] = {}

    async def timer(name: str) -> None:
        if units.get(name, {}).get("load") != "loaded":
            timers[name] = {"active": units.get(name, {}).get("load", "not-found"),
                            "next": None, "last": None}
            return
        next_run, last = await asyncio.gather(
            _get(bus, paths[name], TIMER_INTERFACE, "NextElapseUSecRealtime"),
            _get(bus, paths[name], TIMER_INTERFACE, "LastTriggerUSec"))
        timers[name] = {"active": units[name]["active"], "next": _usec_time(next_run),
                        "last": _usec_time(last)}

    await asyncio.gather(*(status_text(n) for n in ALWAYS_ON),
                         *(timer(n) for n in sorted({*TIMERS, *(
                             u for u in units if u.endswith(".timer"))})))
    return ok({"units": units, "timers": timers})


# -- files ---------------------------------------------------------------------------------

class Unreadable(Exception):
    """A file that exists but cannot be read; the message names it and the fix."""


def _load_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except PermissionError:
        raise Unreadable(f"permission denied on {path} (run as root)") from None
    except (OSError, ValueError) as caught:
        raise Unreadable(f"cannot read {path}: {caught}") from None
    if not isinstance(data, dict):
        raise Unreadable(f"{path} does not hold a JSON object")
    return data


def _json_files(directory: str, names: Mapping[str, str]) -> Reading:
    try:
        found = {key: _load_json(Path(directory) / name) for key, name in names.items()}
    except Unreadable as caught:
        return error(str(caught))
    return ok(found)


async def read_backup(state_dir: str) -> Reading:
    """backup's last.json and check.json (absent before the first run)."""
    return await in_thread(_json_files, state_dir, {"last": "last.json", "check": "check.json"})


async def read_watchdog(state_dir: str) -> Reading:
    """The watchdog's last.json."""
    def read() -> Reading:
        try:
            last = _load_json(Path(state_dir) / "last.json")
        except Unreadable as caught:
            return error(str(caught))
        if last is None:
            return missing(f"the watchdog has not run yet (no {state_dir}/last.json; "
                           "`systemctl start mushishi-watchdog`)")
        return ok(last)
    return await in_thread(read)


async def read_firewall(state_dir: str) -> Reading:
    """The firewall's last.json and pending.json."""
    return await in_thread(_json_files, state_dir, {"last": "last.json",
                                                    "pending": "pending.json"})


def _bench_rows(path: Path) -> Reading:
    try:
        with path.open("rb") as handle:
            header = handle.readline()
            size = handle.seek(0, io.SEEK_END)
            start = max(len(header), size - BENCH_TAIL_BYTES)
            handle.seek(start)
            tail = handle.read()
    except FileNotFoundError:
        return missing(f"no bench results yet ({path}; `mushishi bench`)")
    except PermissionError:
        return error(f"permission denied on {path} (run as root)")
    except OSError as caught:
        return error(f"cannot read {path}: {caught}")
    if start > len(header):
        tail = tail.split(b"\n", 1)[1] if b"\n" in tail else b""  # drop a partial line
    try:
        rows = list(csv.DictReader(io.StringIO((header + tail).decode("utf-8"))))
    except (csv.Error, UnicodeDecodeError) as caught:
        return error(f"cannot parse {path}: {caught}")
    if not rows:
        return missing(f"{path} has no results yet")
    return ok(rows)


async def read_bench(path: str) -> Reading:
    """The newest rows of the bench CSV."""
    return await in_thread(_bench_rows, Path(path))


# -- the egress ledger ---------------------------------------------------------------------

def _budgets(settings: Any, now: datetime) -> Reading:
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


async def read_budgets(settings: Any, now: datetime) -> Reading:
    """Cloud budgets from the egress ledger (read-only; works while the egress is down)."""
    return await in_thread(_budgets, settings, now)


# -- all of it -------------------------------------------------------------------------------

async def collect(settings: Any, *, now: datetime, limit_s: float,
                  bus_address: str | None = None) -> dict[str, Reading]:
    """Read every source concurrently; each gets `limit_s` seconds, bus connection included."""

    async def bus() -> Any:
        try:
            return await connect_bus(bus_address)
        except Exception as caught:  # dbus-fast raises OSError, AuthError, ValueError…
            return down(f"cannot connect to the system bus ({caught}; is dbus running?)")

    connection = asyncio.ensure_future(bus())

    async def on_bus(reader: Callable[[Any], Awaitable[Reading]]) -> Reading:
        return await reader(await connection)

    floor = settings.cpu_floor
    jobs = [
        timed("systemd", on_bus(read_systemd), limit_s, "is systemd or dbus overloaded?"),
        timed("gpud", on_bus(read_gpud), limit_s,
              "hung? `systemctl status mushishi-gpud`"),
        timed("router", read_router(unix_listen_path(settings.router.listen)), limit_s,
              "hung? `systemctl status mushishi-router`"),
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
        if connection.done() and not isinstance(connection.result(), Reading):
            connection.result().disconnect()
        else:
            connection.cancel()
