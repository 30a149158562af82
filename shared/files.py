"""Files that are replaced whole: a reader, or a crash, sees the old file or the new one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


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
