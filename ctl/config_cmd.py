"""`mushishi config check [FILE]`: every error with its key path, or the effective config
with the source of each value (file, env, .env, default) and of each credential."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mushishi.shared.comfyui_workflow import workflow_issues
from mushishi.shared.config import ConfigError, LoadedConfig, load_config, resolve_config_path
from mushishi.shared.config.backup import host_issues
from mushishi.shared.config.firewall import exposure_warnings
from mushishi.shared.config.loader import default_env_file
from mushishi.shared.credentials import credential_env_name, find_credential


def configure(parser: argparse.ArgumentParser) -> None:
    """`check [FILE]`."""
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = sub.add_parser("check", help="validate a config file (default: $MUSHISHI_CONFIG, "
                           "else /etc/mushishi/mushishi.toml)")
    check.add_argument("file", nargs="?", help="config file to check")
    check.add_argument("--quiet", "-q", action="store_true", help="print errors only")


def run(args: argparse.Namespace) -> int:
    """Exit 0 when valid, 1 when not (every problem printed to stderr); warnings (a model
    server's port the firewall opens beyond loopback, a ComfyUI workflow file not there yet)
    go to stderr and keep it valid."""
    path = resolve_config_path(args.file)
    try:
        loaded = load_config(path, env_file=default_env_file())
        # Files this machine must hold (checked here and by the daemon that needs them,
        # not by every daemon at start).
        workflow_problems, workflow_warnings = workflow_issues(loaded.settings.backends)
        issues = host_issues(loaded.settings) + workflow_problems
        if issues:
            raise ConfigError(str(path), issues)
    except ConfigError as error:
        print(error.report(), file=sys.stderr)
        count = len(error.issues)
        print(f"{path}: {count} problem{'s' if count != 1 else ''}; not valid", file=sys.stderr)
        return 1
    for warning in [*workflow_warnings, *exposure_warnings(loaded.settings)]:
        print(f"warning: {warning}", file=sys.stderr)
    if not args.quiet:
        print(explain(loaded))
    return 0


def _credential_keys(loaded: LoadedConfig) -> list[tuple[str, str]]:
    """(key path, credential name) for every *_credential setting that is set, in tables
    of lists too (`backup.copies[0].password_credential`)."""
    found: list[tuple[str, str]] = []
    for key, value in _flat(loaded.settings.model_dump(mode="json")):
        if isinstance(value, list):
            for index, item in enumerate(value):
                found += [(f"{key}[{index}].{k}", v) for k, v in _flat(item)
                          if k.endswith("_credential") and isinstance(v, str)]
        elif key.endswith("_credential") and isinstance(value, str):
            found.append((key, value))
    return found


def _flat(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(data, dict) and data:
        out: list[tuple[str, Any]] = []
        for key, value in data.items():
            out += _flat(value, f"{prefix}.{key}" if prefix else str(key))
        return out
    return [(prefix, data)]


def explain(loaded: LoadedConfig) -> str:
    """The effective config, one `key = value  # source` line per setting."""
    lines = [f"# {loaded.path}: valid",
             f"# .env: {loaded.env_file if loaded.env_file else 'none'}",
             "# precedence: environment > .env > file > default"]
    width = max((len(k) for k in loaded.sources), default=0)
    values = dict(_flat(loaded.settings.model_dump(mode="json")))
    for key, source in loaded.sources.items():
        rendered = json.dumps(values.get(key), ensure_ascii=False)
        lines.append(f"{key:<{width}} = {rendered}  # {source}")
    credentials = _credential_keys(loaded)
    if credentials:
        lines.append("")
        lines.append("# credentials (values never shown)")
        for key, name in credentials:
            found = find_credential(name, dotenv=loaded.dotenv)
            where = (
                {"credential": "$CREDENTIALS_DIRECTORY", "env": f"env {credential_env_name(name)}",
                 ".env": f".env {credential_env_name(name)}"}[found.source]
                if found else f"missing (LoadCredential={name}:… or {credential_env_name(name)})"
            )
            lines.append(f"{key:<{width}} = {json.dumps(name)}  # {where}")
    return "\n".join(lines)
