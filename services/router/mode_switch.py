"""Switches nobody typed: a request's GPU mode (`on_mode_mismatch = "switch"`) and the idle
return (`[modes] idle_mode`).

However many requests need the same mode, gpud gets one SwitchModeWithReason call (reason
`request:profile=P`); every request waits for that one. The router holds a mode back for
`[modes] min_mode_dwell_s` after it became active, so that two profiles cannot thrash the
GPU; gpud decides the rest (it refuses while a hold exists or a tenant that the switch would
stop is busy). A refusal, a timeout or a failed call is a `SwitchRefused` with the reason;
the chain policy decides what it means for the tier.

The idle return asks gpud for `idle_mode` (reason `idle`) once no request has used a
backend with GPU modes for `idle_after_s` (and none is in flight or queued, and no switch
is awaited); the CPU floor and cloud hops are not GPU work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from mushishi.services.router.core import dwell_left, idle_return_due
from mushishi.services.router.state import RoutingState
from mushishi.shared.config.gpu import ModeSwitchingSettings

log = logging.getLogger("mushishi.router.mode_switch")

# How long the idle return's own SwitchModeWithReason call may take.
IDLE_CALL_TIMEOUT_S = 30.0


class SwitchRefused(Exception):
    """No switch: gpud refused (its own explanation), the dwell time holds the mode, the
    call timed out or failed. `reason` says which, for the error message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# Ask gpud to switch to a mode for a reason (LastSwitchReason), waiting up to the given
# seconds for its answer; raises SwitchRefused when gpud refuses, TimeoutError when it does
# not answer in time.
SwitchMode = Callable[[str, str, float], Awaitable[None]]


class ModeSwitcher:
    """One switch per mode at a time, shared by every request waiting for it; the dwell
    time; the idle return."""

    def __init__(self, switch_mode: SwitchMode, state: RoutingState,
                 settings: ModeSwitchingSettings, clock: Callable[[], float]) -> None:
        self._switch_mode = switch_mode
        self._state = state
        self.settings = settings
        self._clock = clock
        self._switches: dict[str, asyncio.Task[None]] = {}
        self._waiting = 0  # requests waiting for a switch they asked for
        self._idle_tried = float("-inf")
        # The last switch gpud accepted for a request, and when: what `awaiting` reads.
        self._accepted: tuple[str, float] | None = None
        self._idle_task: asyncio.Task[None] | None = None

    async def request(self, profile: str, mode: str, wait_s: float) -> None:
        """Have gpud switch to `mode` for a request of `profile`, or raise SwitchRefused."""
        task = self._switches.get(mode)
        if task is None or task.done():
            left = dwell_left(self._state.mode_since, self._clock(),
                              self.settings.min_mode_dwell_s)
            if left > 0:
                raise SwitchRefused(
                    f"mode {self._state.gpu.active_mode} became active less than "
                    f"{self.settings.min_mode_dwell_s:g}s ago (modes.min_mode_dwell_s); "
                    f"requests may ask for another in {left:.0f}s")
            task = self._switches[mode] = asyncio.create_task(
                self._switch(mode, f"request:profile={profile}", wait_s))
        self._waiting += 1
        try:
            await asyncio.shield(task)
        except SwitchRefused:
            raise
        except TimeoutError:
            raise SwitchRefused(f"gpud did not answer in {wait_s:g}s") from None
        except Exception as error:  # the bus went away mid-call, or any D-Bus failure
            log.warning("asking gpud for mode %s failed: %s", mode, error)
            raise SwitchRefused(f"asking gpud failed: {error}") from None
        finally:
            self._waiting -= 1

    async def _switch(self, mode: str, why: str, wait_s: float) -> None:
        log.info("asking gpud to switch to %s (%s)", mode, why, extra={"MUSHISHI_MODE": mode})
        await self._switch_mode(mode, why, wait_s)
        self._accepted = (mode, self._clock())

    def awaiting(self, mode: str | None) -> bool:
        """Whether the switch under way is one gpud accepted for a request, to `mode`
        (gpud shows `switching` before it answers, so a switch that began after the answer
        is someone else's)."""
        state = self._state
        return (mode is not None and self._accepted is not None
                and self._accepted[0] == mode and state.gpu.state == "switching"
                and state.gpu_changed_at <= self._accepted[1])

    # -- the idle return ---------------------------------------------------------------------
    def start(self) -> None:
        """Start the idle return when `[modes] idle_mode` is set."""
        if self.settings.idle_mode is not None:
            self._idle_task = asyncio.create_task(self._idle_loop(), name="idle-return")

    def reconfigure(self, settings: ModeSwitchingSettings) -> None:
        """Adopt a reloaded `[modes]` (dwell, idle mode and time)."""
        self.settings = settings
        if self._idle_task is not None:
            self._idle_task.cancel()
            self._idle_task = None
        self.start()

    async def _idle_loop(self) -> None:
        period = min(max(self.settings.idle_after_s / 4, 0.25), 30.0)
        while True:
            await asyncio.sleep(period)
            try:
                await self.idle_check()
            except Exception:  # the idle return must outlive any one failure
                log.exception("the idle return failed")

    def quiet_since(self) -> float:
        """Since when the GPU has had no work the router knows of (and no switch)."""
        state = self._state
        now = self._clock()
        if self._waiting or state.gpu_busy() or state.gpu.state == "switching":
            return now
        return max(state.last_gpu_work, state.mode_since, state.gpu_changed_at,
                   self._idle_tried)

    async def idle_check(self) -> bool:
        """Ask gpud for the idle mode when it is due; True when gpud accepted."""
        settings = self.settings
        now = self._clock()
        if not idle_return_due(self._state.gpu, settings.idle_mode, self.quiet_since(), now,
                               settings.idle_after_s):
            return False
        mode = settings.idle_mode
        assert mode is not None
        self._idle_tried = now  # refused or not, the next try waits another idle_after_s
        log.info("no GPU work for %gs: returning to idle mode %s", settings.idle_after_s, mode,
                 extra={"MUSHISHI_MODE": mode})
        try:
            await self._switch_mode(mode, "idle", IDLE_CALL_TIMEOUT_S)
        except SwitchRefused as refused:
            log.info("idle return to %s refused by gpud: %s", mode, refused.reason,
                     extra={"MUSHISHI_MODE": mode})
            return False
        except Exception as error:  # timeout, or the bus went away
            log.warning("idle return to %s failed: %s", mode, error,
                        extra={"MUSHISHI_MODE": mode})
            return False
        return True

    def close(self) -> None:
        """Stop waiting for switches in progress, and the idle return."""
        for task in self._switches.values():
            task.cancel()
        if self._idle_task is not None:
            self._idle_task.cancel()
