"""Test-only switches: environment variables named `MUSHISHI_TEST_*` that turn a check off
(never the config: the loader ignores the prefix), and where systemd would hand one to a
unit. `mushishi status` names each one it finds with its source and how to remove it.

A unit gets a variable from the service manager's environment (`systemctl
set-environment`, shown by `systemctl show-environment`), from an `Environment=` line of
its unit file or of a drop-in, or from an `EnvironmentFile=`. systemd's D-Bus API gives the
merged `Environment=` list and the unit's files (shared/systemd.py); the line that sets a
variable is found by reading those files, in the order systemd applies them.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mushishi.shared.systemd import UnitEnvironment

PREFIX = "MUSHISHI_TEST_"
# The switches themselves, read by the daemons whose check they turn off.
CONNECT_CHECK_TEST_ENV = PREFIX + "DISABLE_CONNECT_CHECK"
# What each known switch turns off.
DESCRIPTIONS = {
    CONNECT_CHECK_TEST_ENV: "turns the router's connect-time sovereignty check off",
}
MANAGER = "systemctl set-environment"


@dataclass(frozen=True, slots=True)
class DisabledCheck:
    """One test-only switch found: its name and value, what it turns off, which unit gets it
    (None: every unit started from now on), where it is set, and how to remove it."""

    name: str
    value: str
    what: str
    unit: str | None
    source: str
    fix: str

    def line(self) -> str:
        """`MUSHISHI_TEST_X=1 (turns … off) in mushishi-router.service from drop-in …`."""
        who = f"in {self.unit}" if self.unit else "for every unit started from now on"
        return f"{self.name}={self.value} ({self.what}) {who}, from {self.source}: {self.fix}"


def switches(assignments: Iterable[str]) -> dict[str, str]:
    """The `MUSHISHI_TEST_*` variables among `NAME=value` assignments (the last one wins)."""
    found = {}
    for assignment in assignments:
        name, equals, value = assignment.partition("=")
        if equals and name.startswith(PREFIX):
            found[name] = value
    return found


def _describe(name: str) -> str:
    return DESCRIPTIONS.get(name, "a test-only switch: it turns a check off")


def _setting_file(files: Iterable[str], name: str, read_text: Callable[[str], str | None]
                  ) -> str | None:
    """The file whose `Environment=` line set `name` last, reading `files` in systemd's
    order (an empty `Environment=` line resets everything before it); None if none did."""
    where = None
    for path in files:
        text = read_text(path) if path else None
        for raw in (text or "").splitlines():
            key, equals, value = raw.strip().partition("=")
            if not equals or key.strip() != "Environment":
                continue
            if not value.strip():
                where = None
                continue
            try:
                words = shlex.split(value)
            except ValueError:
                words = value.split()
            if any(word.partition("=")[0] == name for word in words):
                where = path
    return where


def _restart(unit: str) -> str:
    return f"then `systemctl daemon-reload` and `systemctl restart {unit}`"


def _unit_source(unit: UnitEnvironment, name: str, read_text: Callable[[str], str | None]
                 ) -> tuple[str, str]:
    """(where an Environment= line sets `name` for `unit`, how to remove it)."""
    files = [p for p in (unit.fragment_path, *unit.drop_in_paths) if p]
    where = _setting_file(files, name, read_text)
    if where is not None:
        kind = "the unit file" if where == unit.fragment_path else "drop-in"
        return f"{kind} {where}", f"remove its Environment= line, {_restart(unit.name)}"
    return (f"an Environment= line of the unit ({', '.join(files) or 'no unit file'})",
            f"`systemctl cat {unit.name}` shows it; remove it, {_restart(unit.name)}")


def _file_switches(text: str) -> dict[str, str]:
    assignments = []
    for raw in text.splitlines():
        line = raw.strip().removeprefix("export ").strip()
        if line and not line.startswith(("#", ";")):
            name, equals, value = line.partition("=")
            assignments.append(f"{name.strip()}{equals}{value.strip().strip(chr(34) + chr(39))}")
    return switches(assignments)


def locate(manager: Iterable[str], units: Mapping[str, UnitEnvironment],
           read_text: Callable[[str], str | None]) -> list[DisabledCheck]:
    """Every test-only switch systemd would hand to a unit: the manager's, then each unit's
    Environment= and EnvironmentFile= (`read_text(path)` reads a file, None when it
    cannot)."""
    found = [DisabledCheck(name, value, _describe(name), None, f"`{MANAGER}` (the service "
                           "manager's environment, `systemctl show-environment`)",
                           f"`systemctl unset-environment {name}`, then restart the units "
                           "started since")
             for name, value in switches(manager).items()]
    for unit in units.values():
        for name, value in switches(unit.environment).items():
            source, fix = _unit_source(unit, name, read_text)
            found.append(DisabledCheck(name, value, _describe(name), unit.name, source, fix))
        for path in unit.environment_files:
            text = read_text(path)
            for name, value in (_file_switches(text) if text is not None else {}).items():
                found.append(DisabledCheck(name, value, _describe(name), unit.name,
                                           f"environment file {path}",
                                           f"remove it there, {_restart(unit.name)}"))
    return found
