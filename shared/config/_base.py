"""Base model and the issue type every config check reports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict


class Section(BaseModel):
    """A config table: unknown or misplaced keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_default=True, populate_by_name=False)


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem found in a config, at a dotted key path (`profiles.private.chain[1]`)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def _absolute(value: str) -> str:
    if not PurePosixPath(value).is_absolute():
        raise ValueError(f"must be an absolute path (got {value!r}); mushishi never searches $PATH")
    return value


AbsolutePath = Annotated[str, AfterValidator(_absolute)]
"""A filesystem path that must be absolute: units run with an empty, predictable environment."""


def _credential_name(value: str) -> str:
    if not value or "/" in value or value.startswith("."):
        raise ValueError(
            f"{value!r} is not a credential name (a file name under $CREDENTIALS_DIRECTORY)"
        )
    return value


CredentialName = Annotated[str, AfterValidator(_credential_name)]
"""The name of a systemd credential (`LoadCredential=<name>:...`), never the secret itself."""
