"""Generate docs/configuration.md from the models, so the reference cannot drift.

`python -m mushishi.shared.config.reference > docs/configuration.md`; a test fails when the
committed file differs from what this prints.
"""

from __future__ import annotations

import json
import sys
import types
import typing
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from mushishi.shared.config.settings import (
    ENV_NESTED_DELIMITER,
    ENV_PREFIX,
    TOML_HOME,
    MushishiSettings,
)

HEADER = """# Configuration reference

Generated from the pydantic models in `shared/config/` by
`python -m mushishi.shared.config.reference`; `tests/unit/shared/test_docs_drift.py` fails
when this file and the models disagree. Edit the models' descriptions, not this file.

One TOML file, `/etc/mushishi/mushishi.toml` (or `--config`, or `$MUSHISHI_CONFIG`).
Precedence, highest first: environment variables `MUSHISHI_<SECTION>__<KEY>` (lists and
tables as JSON), the same variables in a development `.env` (never read under systemd), the
file, the defaults below. Unknown or misplaced keys are errors. Secrets never live here:
`*_credential` keys name a systemd credential (`/etc/mushishi/credentials/<name>`, loaded
with `LoadCredential=`), or `MUSHISHI_CREDENTIAL_<NAME>` in development.
`mushishi config check` validates a file and shows where every value came from.
"""


def type_name(annotation: Any) -> str:
    """A short, readable name for a field's type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin is list:
        return f"list of {type_name(args[0])}"
    if origin is dict:
        return f"table of {type_name(args[1])}"
    if origin is typing.Annotated:
        return type_name(args[0])
    if annotation is type(None):
        return "unset"
    if annotation is typing.Any:
        return "any value"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "table"
    return {"str": "string", "int": "integer", "float": "number", "bool": "boolean",
            "IPv4Network": "IPv4 network", "IPv6Network": "IPv6 network"}.get(
        getattr(annotation, "__name__", str(annotation)), str(annotation))


def default_text(info: FieldInfo) -> str:
    """The default as TOML-ish text, or 'required'."""
    if info.default is PydanticUndefined and info.default_factory is None:
        return "required"
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "see below"
    try:
        return f"`{json.dumps(value, default=str)}`"
    except TypeError:
        return f"`{value}`"


def _inner_model(annotation: Any) -> tuple[str, type[BaseModel] | None]:
    """("", Model) for a table, ("<name>", Model) for a table of tables, ("[]", Model)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        return _inner_model(members[0]) if len(members) == 1 else ("", None)
    if origin is dict and isinstance(args[1], type) and issubclass(args[1], BaseModel):
        return ".<name>", args[1]
    if origin is list and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return "[]", args[0]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "", annotation
    return "", None


def sections(model: type[BaseModel], prefix: str) -> Iterator[str]:
    """Markdown for `model` at key `prefix`, then for its nested tables."""
    rows = []
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, info in model.model_fields.items():
        suffix, inner = _inner_model(info.annotation)
        key = f"{prefix}.{name}" if prefix else name
        if inner is not None and prefix:
            nested.append((key + suffix, inner))
        description = _cell(info.description or "")
        list_key = key.split("[]")[0]
        env = f"whole list as JSON: {_env(list_key)}" if "[]" in key else _env(key)
        rows.append(f"| `{name}` | {_cell(type_name(info.annotation))} | "
                    f"{_cell(default_text(info))} | {description} | `{env}` |")
    if prefix:
        header = f"[[{prefix[:-2]}]]" if prefix.endswith("[]") else f"[{prefix}]"
        yield f"\n## `{header}`\n"
        if model.__doc__:
            yield model.__doc__.strip().splitlines()[0] + "\n"
        yield "| key | type | default | description | environment |"
        yield "|---|---|---|---|---|"
        yield from rows
    for key, inner in nested:
        yield from sections(inner, key)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _env(key: str) -> str:
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(part.upper() for part in key.split("."))


def render() -> str:
    """The whole reference."""
    parts = [HEADER]
    for name, info in MushishiSettings.model_fields.items():
        suffix, inner = _inner_model(info.annotation)
        if inner is None:
            parts.append(f"\n## `[{name}]`\n")
            parts.append((info.description or "") + "\n")
            parts.append(f"A table mapping names to {type_name(info.annotation)}; "
                         f"environment: `{ENV_PREFIX}{name.upper()}` (JSON).")
            continue
        parts.extend(sections(inner, TOML_HOME.get(name, name) + suffix))
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
