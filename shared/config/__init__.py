"""mushishi configuration: pydantic-settings models of DESIGN.md §4 and their loader."""

from mushishi.shared.config._base import Issue
from mushishi.shared.config.loader import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    ConfigError,
    LoadedConfig,
    load_config,
    load_settings,
    resolve_config_path,
)
from mushishi.shared.config.settings import MushishiSettings

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_PATH",
    "ConfigError",
    "Issue",
    "LoadedConfig",
    "MushishiSettings",
    "load_config",
    "load_settings",
    "resolve_config_path",
]
