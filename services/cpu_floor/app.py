"""mushishi-cpu-floor wiring: config, metrics endpoint, signals, the supervisor.

`mushishi-cpu-floor` supervises llama-server (the unit's ExecStart=);
`mushishi-cpu-floor --record-stop` records why it stopped (the unit's ExecStopPost=).
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import os
import signal
import time
from collections.abc import Mapping, Sequence

from aiohttp import web

from mushishi.services.cpu_floor import core
from mushishi.services.cpu_floor.metrics import FloorMetrics
from mushishi.services.cpu_floor.state import HistoryStore, state_directory
from mushishi.services.cpu_floor.supervisor import Supervisor
from mushishi.shared.config import LoadedConfig
from mushishi.shared.config.cpu_floor import CpuFloorSettings
from mushishi.shared.config.router import parse_tcp_listen
from mushishi.shared.daemon import run_daemon
from mushishi.shared.metrics import start_metrics_server
from mushishi.shared.notify import Notifier

log = logging.getLogger("mushishi.cpu_floor")


def configure(parser: argparse.ArgumentParser) -> None:
    """The floor's own arguments."""
    parser.add_argument(
        "--record-stop", action="store_true",
        help="record why the floor stopped, from systemd's $SERVICE_RESULT, $EXIT_CODE and "
        "$EXIT_STATUS (the unit's ExecStopPost=), then exit")


async def start_metrics(metrics: FloorMetrics, listen: str) -> web.AppRunner | None:
    """Serve /metrics on HOST:PORT; a taken port is logged, never fatal to the floor."""
    host, port = parse_tcp_listen(listen)  # validated with the config
    try:
        return await start_metrics_server(metrics.registry, host, port)
    except OSError as error:
        log.error("cannot serve metrics on %s (cpu_floor.metrics_listen): %s", listen,
                  error.strerror or error)
        return None


async def serve(settings: CpuFloorSettings, notifier: Notifier,
                environ: Mapping[str, str]) -> int:
    """Run the floor until it stops; returns the exit status."""
    metrics = FloorMetrics()
    store = HistoryStore(state_directory(environ))
    supervisor = Supervisor(settings, notifier, metrics, store, environ=environ)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, supervisor.stop)
    runner = await start_metrics(metrics, settings.metrics_listen)
    try:
        return await supervisor.run()
    finally:
        if runner is not None:
            await runner.cleanup()


def record_stop(environ: Mapping[str, str], store: HistoryStore, now: float) -> int:
    """ExecStopPost=: classify the stop systemd reports and add it to the history."""
    reason = core.classify_stop(environ.get("SERVICE_RESULT", ""),
                                environ.get("EXIT_CODE", ""), environ.get("EXIT_STATUS", ""))
    history = core.record_stop(store.load(), reason, now)
    store.save(history)
    explanation = core.STOP_EXPLANATIONS.get(reason, f"systemd reports {reason}")
    detail = (f"SERVICE_RESULT={environ.get('SERVICE_RESULT', '')} "
              f"EXIT_CODE={environ.get('EXIT_CODE', '')} "
              f"EXIT_STATUS={environ.get('EXIT_STATUS', '')}")
    if reason in core.NOT_RESTARTS:
        log.info("the CPU floor stopped: %s (%s)", explanation, detail)
    else:
        log.warning("the CPU floor stopped unexpectedly: %s (%s); restart %d for this reason",
                    explanation, detail, history.counts.get(reason, 0))
    return 0


def body(args: argparse.Namespace, loaded: LoadedConfig, notifier: Notifier) -> int:
    """The daemon (or, with --record-stop, the stop recorder)."""
    if args.record_stop:
        return record_stop(os.environ, HistoryStore(state_directory(os.environ)), time.time())
    # The watchdog's SIGABRT then leaves a traceback of where the supervisor was.
    faulthandler.enable()
    return asyncio.run(serve(loaded.settings.cpu_floor, notifier, os.environ))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of mushishi-cpu-floor."""
    return run_daemon("cpu-floor", "supervise the CPU floor's llama-server", body, argv,
                      configure)
