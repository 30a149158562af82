"""The floor's memory across restarts: a small JSON file in its StateDirectory=."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from mushishi.services.cpu_floor.core import History
from mushishi.shared.files import JsonFileError, load_json_object, write_json

log = logging.getLogger("mushishi.cpu_floor")

FILE_NAME = "restarts.json"


def state_directory(environ: Mapping[str, str]) -> Path | None:
    """The first directory systemd passed in $STATE_DIRECTORY, if any."""
    value = environ.get("STATE_DIRECTORY", "")
    first = value.split(":", 1)[0]
    return Path(first) if first else None


class HistoryStore:
    """Reads and atomically rewrites `<directory>/restarts.json`; memory only without one."""

    def __init__(self, directory: Path | None) -> None:
        self.path = directory / FILE_NAME if directory is not None else None
        self._memory = History()

    def load(self) -> History:
        """The stored history; an unreadable or corrupt file reads as empty (and says so)."""
        if self.path is None:
            return self._memory
        try:
            data = load_json_object(self.path)
        except JsonFileError as error:
            log.warning("ignoring unreadable restart history %s: %s", self.path,
                        error.cause or error)
            return History()
        return History.from_json(data) if data is not None else History()

    def save(self, history: History) -> bool:
        """Replace the stored history (write, fsync, rename); False, with a warning, when it
        cannot be written: losing a restart count must never take the floor down."""
        if self.path is None:
            self._memory = history
            return True
        try:
            write_json(self.path, history.to_json())
        except OSError as error:
            log.warning("cannot record the restart history in %s: %s", self.path, error)
            return False
        return True
