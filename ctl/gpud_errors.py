"""What `mushishi mode` and `mushishi hold` share: gpud's refusals explained on stderr."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any

from mushishi.shared import dbus_names
from mushishi.shared.bus import BusError


def describe_error(error: BusError) -> tuple[str, int]:
    """A message naming what to do, and the exit status (sysexits.h)."""
    if error.name == dbus_names.DBUS_ERROR_ACCESS_DENIED:
        return ("not allowed: only root and members of group mushishi may call "
                f"{dbus_names.BUS_NAME} methods (policy: /etc/dbus-1/system.d/"
                f"{dbus_names.BUS_NAME}.conf)", 77)
    if error.no_owner:
        return ("mushishi-gpud is not running (systemctl status mushishi-gpud.service)", 69)
    if error.name in (dbus_names.ERROR_BUSY, dbus_names.ERROR_HELD, dbus_names.ERROR_SWITCHING):
        return (error.text, 75)
    if error.name in (dbus_names.ERROR_UNKNOWN_MODE, dbus_names.ERROR_NOT_ACTIVE):
        return (error.text, 64)
    return (error.text or error.name, 1)


def run_command(command: str, main: Coroutine[Any, Any, int]) -> int:
    """Run a `mushishi <command>` coroutine: gpud's refusals and an unreachable bus become
    one line on stderr and a sysexits.h status."""
    try:
        return asyncio.run(main)
    except BusError as error:
        message, status = describe_error(error)
        print(f"mushishi {command}: {message}", file=sys.stderr)
        return status
    except (OSError, ConnectionError) as error:
        print(f"mushishi {command}: cannot reach the system bus ({error}); is dbus running?",
              file=sys.stderr)
        return 69
