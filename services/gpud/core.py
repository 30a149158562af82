"""Decisions of the GPU-mode manager, as pure functions over plain data.

Modes, holds and switches: whether a switch may start, what a finished switch (or a
`systemctl isolate` made behind gpud's back) means once systemd has settled, who may
release a hold. No I/O here; `app` feeds in what systemd and the probes report.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from mushishi.shared.config.gpu import mode_target, prepare_unit, tenant_unit
from mushishi.shared.systemd import UnitStatus

READY = "ready"
SWITCHING = "switching"
FAILED = "failed"
OFF = "off"
OFF_MODE = "off"

RefusalKind = Literal["unknown_mode", "switching", "held", "busy", "not_active",
                      "unknown_hold", "not_holder", "bad_reason"]
Origin = Literal["api", "systemd"]

# Why a switch happened (the LastSwitchReason property): a person (`mushishi mode`, a bare
# SwitchMode or `systemctl isolate`), a hold's `--then`, the router's idle return, or a
# request of profile P (`request:profile=P`).
MANUAL = "manual"
HOLD_THEN = "hold-then"
IDLE = "idle"
REQUEST_PREFIX = "request:profile="
_REASON_PROFILE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True, slots=True)
class Hold:
    """A hold on a mode: no switch away from it until released or the owner leaves the bus."""

    cookie: int
    mode: str
    holder: str
    reason: str
    owner: str  # the holder's unique bus name; the hold ends when it disconnects


@dataclass(frozen=True, slots=True)
class ModeState:
    """Everything gpud knows about modes, as its D-Bus properties show it."""

    active_mode: str = ""
    state: str = OFF
    reason: str = ""
    target: str | None = None       # the mode being switched to
    origin: Origin | None = None    # who started the switch in progress
    holds: tuple[Hold, ...] = ()
    last_switch_reason: str = ""    # why the last switch started ("" before the first)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a call was refused; dbus_api maps `kind` to a D-Bus error name."""

    kind: RefusalKind
    message: str


class SwitchError(Exception):
    """A switch that could not even start (systemd refused to isolate); dbus_api maps
    `kind` to a D-Bus error name, like a Refusal's."""

    kind = "switch_failed"


@dataclass(frozen=True, slots=True)
class Observation:
    """The units that make up the modes, once systemd has no job left on them."""

    units: Mapping[str, UnitStatus]
    target_results: Mapping[str, str] = field(default_factory=dict)  # job results by target


@dataclass(frozen=True, slots=True)
class ModeChanged:
    """Emit ModeChanged(old, new): the new mode's tenants are all ready."""

    old: str
    new: str


@dataclass(frozen=True, slots=True)
class SwitchFailed:
    """A switch ended with State=failed."""

    mode: str
    reason: str


@dataclass(frozen=True, slots=True)
class HoldsDropped:
    """Holds that ended because the mode they held is no longer active."""

    holds: tuple[Hold, ...]
    why: str


Event = ModeChanged | SwitchFailed | HoldsDropped


def steady_state(active_mode: str) -> str:
    """State for a mode whose tenants are all up: `off` for the off mode or no mode."""
    return OFF if active_mode in ("", OFF_MODE) else READY


def check_switch(state: ModeState, mode: str, modes: Mapping[str, Sequence[str]],
                 force: bool) -> Refusal | None:
    """Refusals that need no probe: unknown mode, a switch in progress, holds."""
    if mode not in modes:
        return Refusal("unknown_mode",
                       f"unknown mode {mode!r} (modes: {', '.join(sorted(modes))})")
    if state.state == SWITCHING:
        return Refusal("switching", f"a switch to {state.target} is in progress")
    blocking = [hold for hold in state.holds if hold.mode != mode]
    if blocking and not force:
        held = "; ".join(f"{h.holder} holds {h.mode}" + (f" ({h.reason})" if h.reason else "")
                         for h in blocking)
        return Refusal("held", f"mode {state.active_mode} is held: {held}")
    return None


def is_noop(state: ModeState, mode: str) -> bool:
    """Switching to the mode already active and healthy changes nothing."""
    return state.active_mode == mode and state.state in (READY, OFF)


def leaving_tenants(modes: Mapping[str, Sequence[str]], running: Sequence[str],
                    target: str) -> list[str]:
    """Running tenants that a switch to `target` stops: the ones whose work matters."""
    staying = set(modes.get(target, ()))
    return [tenant for tenant in running if tenant not in staying]


def busy_refusal(lines: Sequence[str]) -> Refusal | None:
    """Refuse when the busy probe found work in flight."""
    if not lines:
        return None
    return Refusal("busy", "work in flight: " + "; ".join(lines)
                   + " (wait, or switch with force to drain it first)")


def check_reason(reason: str) -> Refusal | None:
    """A switch's reason must be one gpud knows (LastSwitchReason is read by tools)."""
    if reason in (MANUAL, HOLD_THEN, IDLE):
        return None
    if reason.startswith(REQUEST_PREFIX) and _REASON_PROFILE.fullmatch(
            reason[len(REQUEST_PREFIX):]):
        return None
    return Refusal("bad_reason", f"unknown switch reason {reason[:80]!r} (one of {MANUAL}, "
                   f"{HOLD_THEN}, {IDLE}, {REQUEST_PREFIX}<profile>)")


def begin_switch(state: ModeState, mode: str, origin: Origin,
                 why: str = MANUAL) -> ModeState:
    """State=switching towards `mode`, started for `why` (LastSwitchReason)."""
    return dataclasses.replace(state, state=SWITCHING, target=mode, origin=origin, reason="",
                               last_switch_reason=why)


def watched_units(modes: Mapping[str, Sequence[str]]) -> list[str]:
    """Every unit whose jobs and states make up the modes."""
    units = {mode_target(mode) for mode in modes}
    units |= {prepare_unit(mode) for mode in modes}
    units |= {tenant_unit(t) for tenants in modes.values() for t in tenants}
    return sorted(units)


def _why(status: UnitStatus) -> str:
    text = status.status_text.strip()
    if status.active_state in ("active", "reloading"):
        return "active"
    if status.active_state == "failed" or status.result != "success":
        return f"failed ({status.result})" + (
            f": {text}" if text else f"; see journalctl -u {status.name}")
    return status.active_state + (f": {text}" if text else "")


def settle(state: ModeState, seen: Observation, modes: Mapping[str, Sequence[str]]
           ) -> tuple[ModeState, list[Event]]:
    """The state once systemd has no job left on the mode units, and what to announce.

    The active mode is the one whose target is active. Its state is `failed` when one of
    its tenants (or its GPU preparation) is not running, or when a switch did not reach
    its target; otherwise `ready` (or `off`). ModeChanged is announced when a switch
    succeeds or the active mode changed; holds on any other mode end.
    """
    def status(unit: str) -> UnitStatus:
        return seen.units.get(unit, UnitStatus(unit))

    active = sorted(m for m in modes if status(mode_target(m)).active_state == "active")
    # The switch's own target wins when several are active (conflicts are being resolved).
    new_mode = (state.target or "") if state.target in active else (active[0] if active else "")

    problems: list[str] = []
    if state.target is not None and state.target != new_mode:
        result = seen.target_results.get(mode_target(state.target), "")
        problems.append(f"{mode_target(state.target)} did not start"
                        + (f" (job {result})" if result else ""))
    if len(active) > 1:
        problems.append(f"several mode targets are active: {', '.join(active)}")
    if new_mode:
        prepare = status(prepare_unit(new_mode))
        if prepare.active_state == "failed":
            problems.append(f"GPU preparation {prepare_unit(new_mode)} {_why(prepare)}")
        for tenant in modes[new_mode]:
            unit = status(tenant_unit(tenant))
            if unit.active_state not in ("active", "reloading"):
                problems.append(f"tenant {tenant} {_why(unit)}")

    events: list[Event] = []
    old_mode = state.active_mode
    if problems:
        reason = "; ".join(problems)
        new_state = dataclasses.replace(state, active_mode=new_mode, state=FAILED,
                                        reason=reason, target=None, origin=None)
        if state.state != FAILED or state.reason != reason or state.target is not None:
            events.append(SwitchFailed(state.target or new_mode, reason))
    else:
        new_state = dataclasses.replace(state, active_mode=new_mode,
                                        state=steady_state(new_mode), reason="",
                                        target=None, origin=None)
        if state.target is not None or new_mode != old_mode or state.state == FAILED:
            events.append(ModeChanged(old_mode, new_mode))
    dropped = tuple(hold for hold in new_state.holds if hold.mode != new_mode)
    if dropped:
        new_state = dataclasses.replace(
            new_state, holds=tuple(h for h in new_state.holds if h.mode == new_mode))
        events.append(HoldsDropped(dropped, f"the active mode is now {new_mode or 'none'}"))
    return new_state, events


def add_hold(state: ModeState, hold: Hold, modes: Mapping[str, Sequence[str]]
             ) -> ModeState | Refusal:
    """Register a hold on the active mode (or on the mode a switch is heading to)."""
    if hold.mode not in modes:
        return Refusal("unknown_mode",
                       f"unknown mode {hold.mode!r} (modes: {', '.join(sorted(modes))})")
    if state.state == SWITCHING:
        if state.target != hold.mode:
            return Refusal("not_active", f"cannot hold {hold.mode}: switching to {state.target}")
    elif state.active_mode != hold.mode:
        return Refusal("not_active", f"cannot hold {hold.mode}: the active mode is "
                       f"{state.active_mode or 'none'} (switch to it first)")
    elif state.state == FAILED:
        return Refusal("not_active", f"cannot hold {hold.mode}: it failed ({state.reason})")
    return dataclasses.replace(state, holds=(*state.holds, hold))


def release_hold(state: ModeState, cookie: int, caller: str,
                 caller_is_root: bool = False) -> ModeState | Refusal:
    """Release a hold; only its owner (or root) may."""
    hold = next((h for h in state.holds if h.cookie == cookie), None)
    if hold is None:
        return Refusal("unknown_hold", f"no hold with cookie {cookie} (released already, "
                       "or ended by a switch)")
    if hold.owner != caller and not caller_is_root:
        return Refusal("not_holder", f"hold {cookie} belongs to {hold.holder} ({hold.owner}); "
                       "only its holder may release it")
    return dataclasses.replace(state, holds=tuple(h for h in state.holds if h.cookie != cookie))


def drop_owner(state: ModeState, owner: str) -> tuple[ModeState, tuple[Hold, ...]]:
    """End the holds of a bus connection that went away."""
    gone = tuple(h for h in state.holds if h.owner == owner)
    if not gone:
        return state, ()
    return dataclasses.replace(state, holds=tuple(h for h in state.holds
                                                  if h.owner != owner)), gone


def describe_progress(target: str | None, pending: Sequence[UnitStatus]) -> str:
    """One line on what a switch is waiting for, built from systemd's jobs and tenants'
    STATUS= lines."""
    if target is None:
        return ""
    waiting = [u for u in pending if u.name != mode_target(target)]
    if not waiting:
        return f"switching to {target}"
    parts = []
    for unit in waiting:
        verb = {"start": "starting", "stop": "stopping"}.get(unit.job_type, unit.job_type)
        text = f"{verb} {unit.name}"
        if unit.status_text:
            text += f" ({unit.status_text})"
        parts.append(text)
    return f"switching to {target}: " + "; ".join(parts)
