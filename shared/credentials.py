"""Secrets: systemd credentials first, a development environment variable second.

A secret never lives in the TOML file. Under systemd, `LoadCredential=NAME:PATH` places it
in `$CREDENTIALS_DIRECTORY/NAME`, readable only by the unit. For development, the variable
`MUSHISHI_CREDENTIAL_<NAME>` (upper case, `-` as `_`) in the environment or a `.env` file
stands in for it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CREDENTIAL_ENV_PREFIX = "MUSHISHI_CREDENTIAL_"
# Where systemd places a unit's LoadCredential= files (systemd.exec(5)).
CREDENTIALS_DIRECTORY_ENV = "CREDENTIALS_DIRECTORY"


def credential_env_name(name: str) -> str:
    """The development variable that stands in for credential `name`."""
    return CREDENTIAL_ENV_PREFIX + name.upper().replace("-", "_").replace(".", "_")


@dataclass(frozen=True, slots=True)
class Credential:
    """A secret's value and where it came from (`credential`, `env` or `.env`); `path` is the
    file of a systemd credential (a tool that reads a password file is given that)."""

    name: str
    value: str
    source: str
    path: Path | None = None

    def __repr__(self) -> str:  # never print the secret itself
        return f"Credential(name={self.name!r}, source={self.source!r}, value=<hidden>)"


def find_credential(
    name: str,
    *,
    environ: Mapping[str, str] | None = None,
    dotenv: Mapping[str, str | None] | None = None,
) -> Credential | None:
    """Return credential `name`, or None when no source has it."""
    environ = os.environ if environ is None else environ
    directory = environ.get(CREDENTIALS_DIRECTORY_ENV)
    if directory:
        path = Path(directory) / name
        if path.is_file():
            return Credential(name, path.read_text(encoding="utf-8").strip(), "credential",
                              path)
    variable = credential_env_name(name)
    if environ.get(variable):
        return Credential(name, environ[variable], "env")
    if dotenv and dotenv.get(variable):
        return Credential(name, str(dotenv[variable]), ".env")
    return None


def read_credential(name: str, **sources: Mapping[str, str] | None) -> str:
    """Return credential `name`'s value or raise LookupError naming where it was looked for."""
    credential = find_credential(name, **sources)  # type: ignore[arg-type]
    if credential is None:
        raise LookupError(
            f"credential {name!r} not found: add `LoadCredential={name}:/etc/mushishi/"
            f"credentials/{name}` to the unit, or set {credential_env_name(name)} for development"
        )
    return credential.value
