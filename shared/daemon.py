"""The common entry point of every mushishi daemon: arguments, logging, config, exit codes."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence

from mushishi.shared.config import ConfigError, LoadedConfig, load_config, resolve_config_path
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
    loaded = load_or_explain(args.config, notifier)
    if loaded is None:
        return EX_CONFIG
    return body(args, loaded, notifier)


def not_implemented(name: str, issue: str, argv: Sequence[str] | None = None) -> int:
    """An honest placeholder: validate the config, then refuse to pretend to work."""

    def body(args: argparse.Namespace, loaded: LoadedConfig, notifier: Notifier) -> int:
        message = f"mushishi-{name}: not implemented yet ({issue})"
        log.error(message)
        notifier.status(message)
        return EX_UNAVAILABLE

    return run_daemon(name, f"mushishi-{name} (not implemented yet)", body, argv)
