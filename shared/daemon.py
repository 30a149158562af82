"""The common entry point of every mushishi daemon: arguments, logging, config, exit codes."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from mushishi.shared.config import (
    ConfigError,
    LoadedConfig,
    MushishiSettings,
    load_config,
    resolve_config_path,
)
from mushishi.shared.config.loader import default_env_file
from mushishi.shared.journal import setup_logging
from mushishi.shared.notify import Notifier

EX_CONFIG = 78  # sysexits.h; units carry RestartPreventExitStatus=78 so a bad config never loops
EX_UNAVAILABLE = 69

log = logging.getLogger("mushishi")


def build_parser(name: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with the `--config PATH` every daemon accepts."""
    parser = argparse.ArgumentParser(prog=f"mushishi-{name}", description=description)
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: $MUSHISHI_CONFIG, else /etc/mushishi/mushishi.toml)",
    )
    return parser


def load_or_explain(config: str | None, notifier: Notifier | None = None) -> LoadedConfig | None:
    """Load the config; on failure log every problem with its key path and return None."""
    path = resolve_config_path(config)
    try:
        return load_config(path, env_file=default_env_file())
    except ConfigError as error:
        for issue in error.issues:
            log.error("invalid config %s: %s", error.source, issue)
        if notifier is not None:
            notifier.status(error.one_line())
        return None


def run_daemon(
    name: str,
    description: str,
    body: Callable[[argparse.Namespace, LoadedConfig, Notifier], int],
    argv: Sequence[str] | None = None,
    configure: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    """Parse arguments, set up journal logging, load the config, then hand over to `body`."""
    parser = build_parser(name, description)
    if configure is not None:
        configure(parser)
    args = parser.parse_args(argv)
    setup_logging(f"mushishi-{name}")
    notifier = Notifier()
    try:
        loaded = load_or_explain(args.config, notifier)
        if loaded is None:
            return EX_CONFIG
        return body(args, loaded, notifier)
    finally:
        if notifier.sent:
            # The last STATUS= line (a oneshot's result, a config error) must reach systemd
            # before this process exits, or systemd drops it as from an unknown sender.
            notifier.barrier()


def run_fast(main: Coroutine[Any, Any, int]) -> int:
    """Run `main` to completion on uvloop when it is installed, else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def stop_on_signals() -> asyncio.Event:
    """An event the running loop sets on SIGTERM (systemd's stop) or SIGINT (Ctrl-C)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


def reload_on_sighup(loaded: LoadedConfig, notifier: Notifier, logger: logging.Logger,
                     apply: Callable[[MushishiSettings], None],
                     status_line: Callable[[], str]) -> None:
    """On SIGHUP: RELOADING=1, read `loaded`'s file again and hand valid settings to `apply`
    (an invalid config is refused, each problem logged to `logger`, and the running one kept),
    then READY=1 with `status_line()`."""

    def reload() -> None:
        notifier.reloading()
        try:
            fresh = load_config(loaded.path, env_file=loaded.env_file).settings
        except ConfigError as error:
            for issue in error.issues:
                logger.error("reload refused, keeping the running config: %s: %s",
                             error.source, issue)
        else:
            apply(fresh)
        notifier.ready(status_line())

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)

