"""Files that are replaced whole: a reader, or a crash, sees the old file or the new one.

Text goes through `replace_atomically`; JSON state and result files through `write_json`
and back through `read_json` (tolerant) or `load_json_object` (says what is wrong).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


class JsonFileError(Exception):
    """A JSON file that exists but cannot be used; the message names the file.

    `cause` is the underlying error (None when the file holds valid JSON that is not an
    object), so a caller can say more for, say, a PermissionError.
    """

    def __init__(self, message: str, cause: OSError | ValueError | None = None) -> None:
        super().__init__(message)
        self.cause = cause


def replace_atomically(path: Path, text: str, mode: int | None = None) -> None:
    """Replace `path` by a file holding `text`: written beside it, fsync'd, renamed over it.

    `mode` is set before the rename; without it the file keeps tempfile's 0600.
    """
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent,
                                     prefix=f".{path.name}.", suffix=".tmp",
                                     delete=False) as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
        temporary = Path(handle.name)
    if mode is not None:
        temporary.chmod(mode)
    temporary.replace(path)


def write_json(path: Path, data: Any, mode: int | None = None, *, pretty: bool = False
               ) -> None:
    """Replace `path` by `data` as JSON, atomically (see `replace_atomically`).

    `pretty` is for files people read too (results, state): keys sorted, indented, ending
    in a newline; otherwise one compact line.
    """
    text = json.dumps(data, indent=2, sort_keys=True) + "\n" if pretty else json.dumps(data)
    replace_atomically(path, text, mode)


def load_json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when the file does not exist.

    Raises JsonFileError when it cannot be read, is not JSON, or holds something else.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise JsonFileError(f"cannot read {path}: {error}", error) from None
    if not isinstance(data, dict):
        raise JsonFileError(f"{path} does not hold a JSON object")
    return data


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from a file, or None when it is absent or unreadable."""
    try:
        return load_json_object(path)
    except JsonFileError:
        return None
