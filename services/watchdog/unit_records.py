"""What a failure alert may quote from a unit's journal: systemd's own records about the unit
and mushishi's records in their redacted form, never a process's output.

The rule (docs/alerts.md), decided by what a record is, never by what it says:

* **systemd's records**: `_PID=1` and `_TRANSPORT=journal`, both set by journald itself
  (no process but PID 1 has pid 1): the unit's state changes, `Main process exited,
  code=…, status=…`, `Failed with result '…'`. Their MESSAGE is systemd's own text about the
  unit, cut to SYSTEMD_CHARS.
* **mushishi's records**: `_TRANSPORT=journal` from the failed unit (`_SYSTEMD_UNIT`, set
  by journald), a `mushishi-*` SYSLOG_IDENTIFIER, a LOGGER in the `mushishi` hierarchy and
  the MUSHISHI_REDACTED field that shared/journal.py's handler sets. Their MESSAGE is never
  read: the alert carries MUSHISHI_REDACTED (the format string with only numbers and
  enumeration members filled in) and the ALERT_FIELDS whose values are plain tokens.
* Everything else is left out: a child's stdout and stderr (`_TRANSPORT=stdout`:
  llama-server, vLLM, `docker compose up` relaying container logs), other libraries'
  loggers, syslog, kernel and audit records.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable, Mapping
from datetime import datetime, tzinfo
from typing import Any

from mushishi.shared.journal import REDACTED_FIELD, WITHHELD

SYSTEMD_CHARS = 240
REDACTED_CHARS = 240
# Structured fields an alert may show, each a name, a code or a number.
ALERT_FIELDS = ("MUSHISHI_PROFILE", "MUSHISHI_TIER", "MUSHISHI_BACKEND", "MUSHISHI_MODE",
                "MUSHISHI_OUTCOME", "MUSHISHI_FAILURE", "MUSHISHI_REFUSAL", "MUSHISHI_STATUS")
_TOKEN = re.compile(r"[A-Za-z0-9_.:@/+-]{1,64}")
_LEVELS = {"0": "emerg", "1": "alert", "2": "critical", "3": "error", "4": "warning",
           "5": "notice", "6": "info", "7": "debug"}


def _text(entry: Mapping[str, Any], name: str) -> str | None:
    """A field as text; journalctl's JSON gives binary or repeated fields as lists."""
    value = entry.get(name)
    return value if isinstance(value, str) else None


def is_systemd_record(entry: Mapping[str, Any]) -> bool:
    """Written by systemd (PID 1) itself, as journald records it."""
    return _text(entry, "_PID") == "1" and _text(entry, "_TRANSPORT") == "journal"


def is_mushishi_record(entry: Mapping[str, Any], unit: str) -> bool:
    """Written by mushishi's journal handler from a process of `unit`."""
    logger = _text(entry, "LOGGER") or ""
    return (_text(entry, "_TRANSPORT") == "journal"
            and _text(entry, "_SYSTEMD_UNIT") == unit
            and (_text(entry, "SYSLOG_IDENTIFIER") or "").startswith("mushishi-")
            and (logger == "mushishi" or logger.startswith("mushishi."))
            and _text(entry, REDACTED_FIELD) is not None)


def _cut(text: str, limit: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + WITHHELD


def _time(entry: Mapping[str, Any], zone: tzinfo | None) -> str:
    try:
        micros = int(entry["__REALTIME_TIMESTAMP"])
    except (KeyError, TypeError, ValueError):
        return "?"
    return datetime.fromtimestamp(micros / 1e6, zone).astimezone(zone).isoformat(
        timespec="seconds")


def render(entry: Mapping[str, Any], unit: str, zone: tzinfo | None = None) -> str | None:
    """The alert's line for one journal entry, or None when the alert may not carry it."""
    if is_systemd_record(entry):
        return f"{_time(entry, zone)} systemd: {_cut(_text(entry, 'MESSAGE') or '', SYSTEMD_CHARS)}"
    if not is_mushishi_record(entry, unit):
        return None
    level = _LEVELS.get(_text(entry, "PRIORITY") or "", "?")
    line = (f"{_time(entry, zone)} {_text(entry, 'LOGGER')} {level}: "
            f"{_cut(_text(entry, REDACTED_FIELD) or '', REDACTED_CHARS)}")
    fields = []
    for name in ALERT_FIELDS:
        value = _text(entry, name)
        if value is not None:
            shown = value if _TOKEN.fullmatch(value) else WITHHELD
            fields.append(f"{name.removeprefix('MUSHISHI_').lower()}={shown}")
    return line + (f" [{' '.join(fields)}]" if fields else "")


def alert_lines(entries: Iterable[Mapping[str, Any]], unit: str, limit: int,
                zone: tzinfo | None = None) -> list[str]:
    """The newest `limit` lines the alert may carry, oldest first."""
    lines = [line for entry in entries if (line := render(entry, unit, zone)) is not None]
    return lines[-limit:] if limit > 0 else []


def journalctl_argv(journalctl: str, unit: str, lines: int) -> list[str]:
    """journalctl reading only the candidates: the unit's native-protocol records and PID 1's
    records about it (`+` is OR). The selection is made again by `render`."""
    return [journalctl, "--no-pager", "--quiet", "--output=json", f"--lines={lines}",
            f"_SYSTEMD_UNIT={unit}", "_TRANSPORT=journal", "+", "_PID=1", f"UNIT={unit}"]


async def read_alert_lines(journalctl: str, unit: str, lines: int, limit_s: float) -> list[str]:
    """What the alert for `unit` may quote from its journal; a line saying why when the
    journal cannot be read."""
    try:
        child = await asyncio.create_subprocess_exec(
            *journalctl_argv(journalctl, unit, lines), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={"LC_ALL": "C.UTF-8", "SYSTEMD_COLORS": "0"})
    except OSError as error:
        return [f"(cannot run {journalctl}: {error.strerror or error})"]
    try:
        stdout, stderr = await asyncio.wait_for(child.communicate(), timeout=limit_s)
    except TimeoutError:
        child.kill()
        await child.wait()
        return [f"(journalctl did not answer within {limit_s:.0f}s)"]
    entries = []
    for raw in stdout.decode("utf-8", "replace").splitlines():
        try:
            entry = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    if child.returncode != 0 and not entries:
        return [f"(journalctl exited {child.returncode}: "
                f"{_cut(stderr.decode('utf-8', 'replace'), 200)})"]
    return alert_lines(entries, unit, lines)
