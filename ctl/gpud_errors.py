"""What `mushishi mode` and `mushishi hold` share: gpud's refusals explained on stderr."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any

from mushishi.services.gpud.client import GpuModeError, describe_error


def run_command(command: str, main: Coroutine[Any, Any, int]) -> int:
    """Run a `mushishi <command>` coroutine: gpud's refusals and an unreachable bus become
    one line on stderr and a sysexits.h status."""
    try:
        return asyncio.run(main)
    except GpuModeError as error:
        message, status = describe_error(error)
        print(f"mushishi {command}: {message}", file=sys.stderr)
        return status
    except (OSError, ConnectionError) as error:
        print(f"mushishi {command}: cannot reach the system bus ({error}); is dbus running?",
              file=sys.stderr)
        return 69
