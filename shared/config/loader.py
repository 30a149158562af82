"""Load, validate and explain a mushishi config: file, then .env, then environment.

Precedence (highest first): `MUSHISHI_<SECTION>__<KEY>` environment variables, the same
variables in a development `.env` file, the TOML file, then the defaults in the models.
Every unknown or misplaced key is an error that names its key path, because a silently
ignored key once disabled a whole fallback chain.
"""

from __future__ import annotations

import difflib
import os
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from pydantic import BaseModel, ValidationError
from pydantic_settings import DotEnvSettingsSource, EnvSettingsSource

from mushishi.shared.config._base import Issue
from mushishi.shared.config.backup import PINNED_HOSTS_ENV
from mushishi.shared.config.settings import (
    CHECKS,
    ENV_NESTED_DELIMITER,
    ENV_PREFIX,
    MushishiSettings,
    _file_data,
    toml_parts,
)
from mushishi.shared.credentials import CREDENTIAL_ENV_PREFIX
from mushishi.shared.disabled_checks import PREFIX as TEST_ENV_PREFIX
from mushishi.shared.processes import INVOCATION_ENV

DEFAULT_CONFIG_PATH = Path("/etc/mushishi/mushishi.toml")
CONFIG_ENV = "MUSHISHI_CONFIG"

# Variables with the MUSHISHI_ prefix that are not config keys.
NON_CONFIG_ENV = frozenset({CONFIG_ENV, PINNED_HOSTS_ENV})
NON_CONFIG_ENV_PREFIXES = (CREDENTIAL_ENV_PREFIX, TEST_ENV_PREFIX)


class ConfigError(Exception):
    """The config cannot be used; `issues` names every problem by key path."""

    def __init__(self, source: str, issues: list[Issue]) -> None:
        self.source = source
        self.issues = issues
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """The first problem and a count, for a daemon's single refusal line."""
        first = self.issues[0] if self.issues else Issue("", "invalid")
        more = f" (and {len(self.issues) - 1} more; run `mushishi config check {self.source}`)"
        return f"invalid config {self.source}: {first}" + (more if len(self.issues) > 1 else "")

    def report(self) -> str:
        """Every problem, one per line."""
        return "\n".join(f"{self.source}: {issue}" for issue in self.issues)


@dataclass
class LoadedConfig:
    """Validated settings plus where each effective value came from."""

    settings: MushishiSettings
    path: Path
    env_file: Path | None
    dotenv: dict[str, str | None] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)


def resolve_config_path(cli_value: str | os.PathLike[str] | None = None,
                        environ: Mapping[str, str] | None = None) -> Path:
    """`--config`, else `$MUSHISHI_CONFIG`, else /etc/mushishi/mushishi.toml."""
    environ = os.environ if environ is None else environ
    return Path(cli_value or environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def default_env_file(environ: Mapping[str, str] | None = None) -> Path | None:
    """The development `.env` in the working directory; never used under systemd."""
    environ = os.environ if environ is None else environ
    if environ.get(INVOCATION_ENV):
        return None
    candidate = Path(".env")
    return candidate.resolve() if candidate.is_file() else None


def load_config(path: str | os.PathLike[str], *, env_file: Path | None = None) -> LoadedConfig:
    """Read and validate the config at `path`; raise ConfigError listing every problem."""
    path = Path(path)
    shown = str(path)
    try:
        with path.open("rb") as handle:
            file_data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(shown, [Issue("", f"no such file (create it, or point --config or "
                                            f"${CONFIG_ENV} at one)")]) from None
    except PermissionError:
        raise ConfigError(shown, [Issue("", "permission denied")]) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(shown, [Issue("", f"TOML syntax error: {error}")]) from None

    dotenv = dict(dotenv_values(env_file)) if env_file else {}
    issues = list(_unknown_variables(os.environ, "environment"))
    issues += _unknown_variables({k: v or "" for k, v in dotenv.items()}, str(env_file))

    env_data = EnvSettingsSource(MushishiSettings)()
    dotenv_data = (
        DotEnvSettingsSource(MushishiSettings, env_file=env_file)() if env_file else {}
    )
    token = _file_data.set(file_data)
    try:
        settings = MushishiSettings(_env_file=env_file)  # type: ignore[call-arg]
    except ValidationError as error:
        issues += [_describe(entry, env_data, dotenv_data) for entry in error.errors()]
        raise ConfigError(shown, issues) from None
    finally:
        _file_data.reset(token)
    for check in CHECKS:
        issues += check(settings)
    if issues:
        raise ConfigError(shown, issues)
    sources = {
        format_path(toml_parts(key_parts)): _source_of(toml_parts(key_parts), file_data,
                                                       dotenv_data, env_data)
        for _, key_parts in _leaves(settings.model_dump(mode="json"))
    }
    return LoadedConfig(settings, path, env_file, dotenv, sources)


def load_settings(path: str | os.PathLike[str], *, env_file: Path | None = None
                  ) -> MushishiSettings:
    """Validated settings from `path` (see load_config)."""
    return load_config(path, env_file=env_file).settings


def format_path(parts: tuple[Any, ...]) -> str:
    """("profiles", "private", "chain", 1) -> "profiles.private.chain[1]"."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def env_name(parts: tuple[Any, ...]) -> str:
    """The environment variable that overrides the key at `parts`."""
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(str(p).upper() for p in parts)


def _unknown_variables(variables: Mapping[str, str], where: str) -> Iterator[Issue]:
    sections = set(MushishiSettings.model_fields)
    for name in variables:
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in NON_CONFIG_ENV:
            continue
        if upper.startswith(NON_CONFIG_ENV_PREFIXES):
            continue
        section = upper.removeprefix(ENV_PREFIX).split(ENV_NESTED_DELIMITER)[0].lower()
        if section not in sections:
            hint = difflib.get_close_matches(section, sections, n=1)
            suffix = f"; did you mean MUSHISHI_{hint[0].upper()}__…?" if hint else ""
            yield Issue(f"{where} {name}", f"unknown config section {section!r}{suffix}")


def _describe(entry: Mapping[str, Any], env_data: dict[str, Any],
              dotenv_data: dict[str, Any]) -> Issue:
    loc = toml_parts(tuple(entry["loc"]))
    path = format_path(loc)
    origin = ""
    if _lookup(env_data, loc) is not _MISSING:
        origin = f" (from environment {env_name(loc)})"
    elif _lookup(dotenv_data, loc) is not _MISSING:
        origin = f" (from .env {env_name(loc)})"
    if entry["type"] == "extra_forbidden":
        return Issue(path, "unknown key" + _suggest(loc) + origin)
    return Issue(path, entry["msg"] + origin)


def _suggest(loc: tuple[Any, ...]) -> str:
    """Explain a typo'd or misplaced key: a close name here, or where such a key belongs."""
    name = str(loc[-1])
    # A key that exists verbatim elsewhere was misplaced, not misspelled.
    homes = sorted({format_path(where) for where in _field_homes(name)})
    if homes:
        return f"; {name!r} belongs in {', '.join(homes)}"
    model = _model_at(loc[:-1])
    if model is not None:
        close = difflib.get_close_matches(name, list(model.model_fields), n=1)
        if close:
            return f"; did you mean {close[0]!r}?"
    return " (not a mushishi setting)"


_MISSING = object()


def _lookup(data: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        in_dict = isinstance(data, dict) and part in data
        in_list = isinstance(data, list) and isinstance(part, int) and part < len(data)
        if in_dict or in_list:
            data = data[part]
        else:
            return _MISSING
    return data


def _unwrap(annotation: Any) -> tuple[str, Any]:
    """Classify an annotation: ("model", cls), ("dict", value), ("list", item) or ("leaf", _)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _unwrap(members[0]) if len(members) == 1 else ("leaf", None)
    if origin is dict:
        return "dict", typing.get_args(annotation)[1]
    if origin is list:
        return "list", typing.get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "model", annotation
    return "leaf", None


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    current: Any = MushishiSettings
    kind = "model"
    for part in loc:
        if kind == "model":
            info = current.model_fields.get(part)
            if info is None:
                return None
            kind, current = _unwrap(info.annotation)
        elif kind in ("dict", "list"):
            kind, current = _unwrap(current)
        else:
            return None
    return current if kind == "model" else None


def _field_homes(name: str) -> Iterator[tuple[Any, ...]]:
    """Every key path pattern (with <name> and [n] placeholders) where `name` is a field."""
    def walk(model: type[BaseModel], prefix: tuple[Any, ...], depth: int) -> Iterator[tuple]:
        if depth > 4:
            return
        for field_name, info in model.model_fields.items():
            here = (*prefix, field_name)
            if field_name == name:
                yield here
            kind, inner = _unwrap(info.annotation)
            while kind in ("dict", "list"):
                here = (*here, "<name>" if kind == "dict" else "[n]")
                kind, inner = _unwrap(inner)
            if kind == "model":
                yield from walk(inner, here, depth + 1)

    for home in walk(MushishiSettings, (), 0):
        yield tuple(p for p in home if p != "[n]")


def _leaves(data: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[str, tuple[Any, ...]]]:
    if isinstance(data, dict) and data:
        for key, value in data.items():
            yield from _leaves(value, (*prefix, key))
    elif prefix:
        yield format_path(prefix), prefix


def _source_of(parts: tuple[Any, ...], file_data: dict[str, Any], dotenv_data: dict[str, Any],
               env_data: dict[str, Any]) -> str:
    if _lookup(env_data, parts) is not _MISSING:
        return f"env {env_name(parts)}"
    if _lookup(dotenv_data, parts) is not _MISSING:
        return f".env {env_name(parts)}"
    if _lookup(file_data, parts) is not _MISSING:
        return "file"
    return "default"
