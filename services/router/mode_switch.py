"""Asking gpud for a profile's GPU mode (`on_mode_mismatch = "switch"`), once per mode.

However many requests need the same mode, gpud gets one SwitchMode call; every request waits
for that one. gpud decides whether the switch may happen (it refuses while a hold exists or
a tenant that the switch would stop is busy); its refusal, a timeout, or a failed call is
answered `mode_mismatch` with the reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from mushishi.services.router.core import RouteProfile
from mushishi.services.router.errors import ErrorCode, Rejection

log = logging.getLogger("mushishi.router.mode_switch")


class SwitchRefused(Exception):
    """gpud refused the switch; `reason` is its own explanation."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# Ask gpud to switch to a mode, waiting up to the given seconds for its answer; raises
# SwitchRefused when gpud refuses, TimeoutError when it does not answer in time.
SwitchMode = Callable[[str, float], Awaitable[None]]


class ModeSwitcher:
    """One SwitchMode call per mode at a time, shared by every request waiting for it."""

    def __init__(self, switch_mode: SwitchMode) -> None:
        self._switch_mode = switch_mode
        self._switches: dict[str, asyncio.Task[None]] = {}

    async def request(self, profile: RouteProfile, wait_s: float) -> None:
        """Have gpud switch to the profile's required mode, or raise a mode_mismatch
        Rejection saying why not."""
        mode = profile.require_mode
        assert mode is not None
        task = self._switches.get(mode)
        if task is None or task.done():
            task = self._switches[mode] = asyncio.create_task(self._switch(mode, wait_s))
        try:
            await asyncio.shield(task)
        except SwitchRefused as refused:
            raise Rejection(ErrorCode.MODE_MISMATCH, (
                f"profile {profile.name!r} requires GPU mode {mode!r}; gpud refused to switch: "
                f"{refused.reason}")) from None
        except TimeoutError:
            raise Rejection(ErrorCode.MODE_MISMATCH, (
                f"profile {profile.name!r} requires GPU mode {mode!r}; the switch did not "
                f"finish in {wait_s:g}s")) from None
        except Exception as error:  # the bus went away mid-call, or any D-Bus failure
            log.warning("asking gpud for mode %s failed: %s", mode, error)
            raise Rejection(ErrorCode.MODE_MISMATCH, (
                f"profile {profile.name!r} requires GPU mode {mode!r}; asking gpud failed: "
                f"{error}")) from None

    async def _switch(self, mode: str, wait_s: float) -> None:
        log.info("asking gpud to switch to %s (on_mode_mismatch = switch)", mode,
                 extra={"MUSHISHI_MODE": mode})
        await self._switch_mode(mode, wait_s)

    def close(self) -> None:
        """Stop waiting for switches in progress."""
        for task in self._switches.values():
            task.cancel()
