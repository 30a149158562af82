"""The config as the operator's commands load it: `--config`, else `$MUSHISHI_CONFIG`, else
/etc/mushishi/mushishi.toml; a config that cannot be loaded is reported on stderr, every
problem with its key, and the command exits EX_CONFIG (78)."""

from __future__ import annotations

import sys
from pathlib import Path

from mushishi.shared.config import (
    ConfigError,
    LoadedConfig,
    MushishiSettings,
    load_config,
    resolve_config_path,
)
from mushishi.shared.daemon import EX_CONFIG

__all__ = ["EX_CONFIG", "loaded_or_report", "settings_or_report"]


def loaded_or_report(config: str | None, *, env_file: Path | None = None
                     ) -> LoadedConfig | None:
    """The loaded config (with where each value came from), or None once the problems are
    printed to stderr."""
    path = resolve_config_path(config)
    try:
        return load_config(path, env_file=env_file)
    except ConfigError as error:
        print(error.report(), file=sys.stderr)
        return None


def settings_or_report(config: str | None, *, env_file: Path | None = None
                       ) -> MushishiSettings | None:
    """The settings, or None once the problems are printed to stderr."""
    loaded = loaded_or_report(config, env_file=env_file)
    return None if loaded is None else loaded.settings
