"""The mode/hold/switch state machine, driven by tables."""

from __future__ import annotations

import dataclasses

import pytest

from mushishi.services.gpud import core
from mushishi.services.gpud.core import (
    FAILED,
    OFF,
    READY,
    SWITCHING,
    Hold,
    HoldsDropped,
    ModeChanged,
    ModeState,
    Observation,
    Refusal,
    SwitchFailed,
    UnitStatus,
)

MODES = {"forensic": ["vllm-forensic"], "agent": ["vllm-agent", "tts"],
         "creative": ["comfyui"], "off": []}
HOLD = Hold(7, "forensic", "report job", "why", ":1.42")


def state(**fields: object) -> ModeState:
    return dataclasses.replace(ModeState(active_mode="forensic", state=READY), **fields)


def units(mode: str, **overrides: UnitStatus) -> dict[str, UnitStatus]:
    """Systemd with `mode` fully up; overrides replace single units."""
    found = {f"mushishi-{m}.target": UnitStatus(f"mushishi-{m}.target",
                                                "active" if m == mode else "inactive")
             for m in MODES}
    for tenant in {t for ts in MODES.values() for t in ts}:
        name = f"mushishi-tenant@{tenant}.service"
        found[name] = UnitStatus(name, "active" if tenant in MODES.get(mode, []) else
                                 "inactive")
    found.update(overrides)
    return found


@pytest.mark.parametrize(("current", "mode", "force", "kind"), [
    (state(), "gaming", False, "unknown_mode"),
    (state(state=SWITCHING, target="agent"), "creative", False, "switching"),
    (state(state=SWITCHING, target="agent"), "creative", True, "switching"),
    (state(holds=(HOLD,)), "creative", False, "held"),
    (state(holds=(HOLD,)), "creative", True, None),
    (state(holds=(HOLD,)), "forensic", False, None),
    (state(), "creative", False, None),
    (state(state=FAILED, reason="x"), "creative", False, None),
])
def test_check_switch_refusals_follow_the_table(current: ModeState, mode: str, force: bool,
                                                kind: str | None) -> None:
    refusal = core.check_switch(current, mode, MODES, force)
    assert (refusal.kind if refusal else None) == kind


def test_held_refusal_names_holder_and_reason() -> None:
    refusal = core.check_switch(state(holds=(HOLD,)), "creative", MODES, False)
    assert refusal == Refusal("held", "mode forensic is held: report job holds forensic (why)")


@pytest.mark.parametrize(("current", "mode", "noop"), [
    (state(), "forensic", True),
    (state(state=FAILED), "forensic", False),   # retrying a failed mode re-isolates
    (state(active_mode="off", state=OFF), "off", True),
    (state(), "agent", False),
])
def test_is_noop_only_for_the_healthy_active_mode(current: ModeState, mode: str,
                                                  noop: bool) -> None:
    assert core.is_noop(current, mode) is noop


def test_leaving_tenants_are_the_running_ones_the_target_does_not_keep() -> None:
    modes = {**MODES, "coding": ["vllm-agent"]}
    assert core.leaving_tenants(modes, ["vllm-agent", "tts"], "coding") == ["tts"]
    assert core.leaving_tenants(modes, ["vllm-forensic"], "forensic") == []


def test_busy_refusal_only_with_findings() -> None:
    assert core.busy_refusal([]) is None
    refusal = core.busy_refusal(["vllm-forensic: 1 request(s) running, 0 waiting (vLLM)"])
    assert refusal is not None and refusal.kind == "busy"
    assert "vllm-forensic: 1 request(s) running" in refusal.message
    assert "force" in refusal.message


def test_settle_after_successful_switch_announces_mode_changed() -> None:
    switching = core.begin_switch(state(), "agent", "api", "request:profile=coder")
    new, events = core.settle(switching, Observation(units("agent")), MODES)
    assert new == ModeState(active_mode="agent", state=READY,
                            last_switch_reason="request:profile=coder")
    assert events == [ModeChanged("forensic", "agent")]


def test_a_switch_records_why_it_started() -> None:
    assert core.begin_switch(state(), "agent", "api").last_switch_reason == core.MANUAL
    assert core.begin_switch(state(), "agent", "systemd").last_switch_reason == "manual"
    assert core.begin_switch(state(), "agent", "api", "idle").last_switch_reason == "idle"


@pytest.mark.parametrize("reason", ["manual", "hold-then", "idle", "request:profile=creative",
                                    "request:profile=a.b-c_1"])
def test_known_switch_reasons_pass(reason: str) -> None:
    assert core.check_reason(reason) is None


@pytest.mark.parametrize("reason", ["", "because", "request:profile=", "request:profile=a b",
                                    "request:profile=" + "x" * 65, "idle\n"])
def test_unknown_switch_reasons_are_refused(reason: str) -> None:
    refusal = core.check_reason(reason)
    assert refusal is not None and refusal.kind == "bad_reason"
    assert "request:profile=<profile>" in refusal.message


def test_settle_to_off_mode_is_state_off() -> None:
    new, events = core.settle(core.begin_switch(state(), "off", "systemd"),
                              Observation(units("off")), MODES)
    assert (new.active_mode, new.state) == ("off", OFF)
    assert events == [ModeChanged("forensic", "off")]


def test_settle_with_a_failed_tenant_fails_with_its_status_text() -> None:
    failed = UnitStatus("mushishi-tenant@tts.service", "failed", "failed", "exit-code",
                        "tenant tts does not fit: needs 6000 MiB")
    seen = Observation(units("agent", **{"mushishi-tenant@tts.service": failed}))
    new, events = core.settle(core.begin_switch(state(), "agent", "api"), seen, MODES)
    assert new.state == FAILED and new.active_mode == "agent"
    assert new.reason == ("tenant tts failed (exit-code): tenant tts does not fit: "
                          "needs 6000 MiB")
    assert events == [SwitchFailed("agent", new.reason)]


def test_settle_when_the_target_never_started_names_the_job_result() -> None:
    seen = Observation(units("forensic"), {"mushishi-agent.target": "canceled"})
    new, events = core.settle(core.begin_switch(state(), "agent", "systemd"), seen, MODES)
    assert new.state == FAILED and new.active_mode == "forensic"
    assert new.reason == "mushishi-agent.target did not start (job canceled)"
    assert events == [SwitchFailed("agent", new.reason)]


def test_settle_with_failed_gpu_preparation_fails() -> None:
    prepare = UnitStatus("mushishi-gpu-prepare@forensic.service", "failed", "failed",
                         "exit-code", "power limit not set: NVML unavailable")
    seen = Observation(units("forensic", **{prepare.name: prepare}))
    new, _ = core.settle(core.begin_switch(state(active_mode="off"), "forensic", "api"),
                         seen, MODES)
    assert new.state == FAILED
    assert "GPU preparation mushishi-gpu-prepare@forensic.service failed" in new.reason


def test_settle_drops_holds_on_modes_no_longer_active() -> None:
    held = state(holds=(HOLD, Hold(8, "agent", "x", "", ":1.9")))
    new, events = core.settle(core.begin_switch(held, "agent", "api"),
                              Observation(units("agent")), MODES)
    assert new.holds == (Hold(8, "agent", "x", "", ":1.9"),)
    assert HoldsDropped((HOLD,), "the active mode is now agent") in events


def test_settle_in_steady_state_notices_a_crashed_tenant_once() -> None:
    crashed = UnitStatus("mushishi-tenant@vllm-forensic.service", "failed", "failed",
                         "signal")
    seen = Observation(units("forensic", **{crashed.name: crashed}))
    new, events = core.settle(state(), seen, MODES)
    assert new.state == FAILED and events == [SwitchFailed("forensic", new.reason)]
    again, events_again = core.settle(new, seen, MODES)
    assert again == new and events_again == []


def test_settle_recovery_from_failed_announces_mode_changed() -> None:
    failed = state(state=FAILED, reason="tenant vllm-forensic failed")
    new, events = core.settle(failed, Observation(units("forensic")), MODES)
    assert new.state == READY and events == [ModeChanged("forensic", "forensic")]


def test_settle_with_nothing_changed_announces_nothing() -> None:
    assert core.settle(state(), Observation(units("forensic")), MODES) == (state(), [])


def test_settle_when_the_mode_target_was_stopped_leaves_no_mode() -> None:
    new, events = core.settle(state(), Observation(units("none")), MODES)
    assert (new.active_mode, new.state) == ("", OFF)
    assert events == [ModeChanged("forensic", "")]


@pytest.mark.parametrize(("current", "hold", "kind"), [
    (state(), HOLD, None),
    (state(), dataclasses.replace(HOLD, mode="agent"), "not_active"),
    (state(), dataclasses.replace(HOLD, mode="gaming"), "unknown_mode"),
    (state(state=SWITCHING, target="forensic"), HOLD, None),
    (state(state=SWITCHING, target="agent"), HOLD, "not_active"),
    (state(state=FAILED, reason="x"), HOLD, "not_active"),
])
def test_add_hold_only_on_the_active_or_incoming_mode(current: ModeState, hold: Hold,
                                                      kind: str | None) -> None:
    result = core.add_hold(current, hold, MODES)
    if kind is None:
        assert isinstance(result, ModeState) and result.holds == (*current.holds, hold)
    else:
        assert isinstance(result, Refusal) and result.kind == kind


@pytest.mark.parametrize(("cookie", "caller", "root", "kind"), [
    (7, ":1.42", False, None),
    (7, ":1.50", False, "not_holder"),
    (7, ":1.50", True, None),
    (8, ":1.42", False, "unknown_hold"),
])
def test_release_hold_only_by_its_owner_or_root(cookie: int, caller: str, root: bool,
                                                kind: str | None) -> None:
    result = core.release_hold(state(holds=(HOLD,)), cookie, caller, caller_is_root=root)
    if kind is None:
        assert isinstance(result, ModeState) and result.holds == ()
    else:
        assert isinstance(result, Refusal) and result.kind == kind


def test_drop_owner_ends_only_that_connections_holds() -> None:
    other = Hold(9, "forensic", "b", "", ":1.7")
    new, gone = core.drop_owner(state(holds=(HOLD, other)), ":1.42")
    assert gone == (HOLD,) and new.holds == (other,)
    assert core.drop_owner(new, ":1.42") == (new, ())


def test_describe_progress_relays_tenant_status_lines() -> None:
    pending = [UnitStatus("mushishi-agent.target", job_type="start"),
               UnitStatus("mushishi-tenant@vllm-forensic.service", "deactivating",
                          status_text="draining: 1 request(s) running", job_type="stop")]
    assert core.describe_progress("agent", pending) == (
        "switching to agent: stopping mushishi-tenant@vllm-forensic.service (draining: 1 "
        "request(s) running)")
    assert core.describe_progress(None, pending) == ""


def test_watched_units_cover_targets_preparations_and_tenants() -> None:
    watched = core.watched_units({"off": [], "agent": ["vllm-agent"]})
    assert watched == ["mushishi-agent.target", "mushishi-gpu-prepare@agent.service",
                       "mushishi-gpu-prepare@off.service", "mushishi-off.target",
                       "mushishi-tenant@vllm-agent.service"]


def test_settle_without_a_status_line_points_to_the_journal() -> None:
    crashed = UnitStatus("mushishi-tenant@comfyui.service", "failed", "failed", "exit-code")
    seen = Observation(units("creative", **{crashed.name: crashed}))
    new, _ = core.settle(core.begin_switch(state(), "creative", "api"), seen, MODES)
    assert new.reason == ("tenant comfyui failed (exit-code); see journalctl -u "
                          "mushishi-tenant@comfyui.service")
