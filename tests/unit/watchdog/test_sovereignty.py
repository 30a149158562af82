"""The sovereignty layers as the watchdog reads them (checks.sovereignty_layers), and what
reaches the phone when one changes (messages.due_layers, plan_sovereignty): once per change,
naming the tenant, a not-known state only once it lasted, recovery when in force again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mushishi.services.watchdog.checks import (
    EgressSocket,
    LayerReading,
    Status,
    egress_socket_layer,
    sovereignty,
    sovereignty_layers,
)
from mushishi.services.watchdog.messages import (
    PRIORITY_MAX,
    AlertState,
    due_layers,
    plan_sovereignty,
    plan_unit_failure,
    plan_watchdog,
)
from mushishi.shared.readings import down, missing, ok
from mushishi.shared.router_status import RouterStatus
from mushishi.shared.tenant_confinement import TenantsLayer
from tests.standins.router_status import status_document

NOW = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
GRACE = timedelta(seconds=60)
LEFT = "tenant web: from container web: a datagram to 203.0.113.1:9 reached 203.0.113.1"
SAFE_SOCKET = ok(EgressSocket("/run/mushishi/egress.sock", "root", "mushishi-egress", 0o660))


def router(**sovereignty: object) -> RouterStatus:
    document = status_document({})
    document["sovereignty"] = {**document["sovereignty"], **sovereignty}
    return RouterStatus.from_json(document)


def layers(tenants: TenantsLayer, *, kernel: bool | None = True) -> list[LayerReading]:
    return sovereignty_layers(ok(router(kernel=kernel, detail="EPERM")), ok(tenants),
                              SAFE_SOCKET)


CONFINED = TenantsLayer(True, "every running tenant is confined (web)", {"web": True})
LEAKING = TenantsLayer(False, LEFT, {"web": False}, {"web": LEFT})
STARTING = TenantsLayer(None, "tenant web: not probed yet (starting)", {"web": None})


def test_each_layer_is_read_and_a_router_that_does_not_answer_keeps_its_last_word() -> None:
    read = layers(LEAKING, kernel=None)
    assert [(r.layer, r.verdict, r.known) for r in read] == [
        ("config", True, True), ("connect-time", True, True), ("kernel", None, True),
        ("tenants", False, True), ("egress", True, True)]
    assert read[3].subject == ("web",) and read[3].detail == LEFT
    gone = sovereignty_layers(down("the router's socket does not exist"), ok(CONFINED),
                              missing("no egress socket at /run/mushishi/egress.sock"))
    assert [r.known for r in gone] == [False, False, False, True, True]
    results = sovereignty(gone)
    assert [r.status for r in results] == [Status.MISSING_SOURCE] * 3 + [Status.OK] * 2
    assert [r.name for r in sovereignty(read)] == [
        "sovereignty:config", "sovereignty:connect-time", "sovereignty:kernel",
        "sovereignty:tenants", "sovereignty:egress"]
    assert sovereignty(read)[3].detail == f"not in force: {LEFT}"
    assert sovereignty(read)[2].detail == "not known: EPERM"


@pytest.mark.parametrize(("mode", "group", "verdict"), [
    (0o660, "mushishi-egress", True),
    (0o600, "root", True),
    (0o666, "mushishi-egress", False),   # anyone
    (0o660, "mushishi", False),          # the tenants' and the CPU floor's group
    (0o640, "mushishi", True),           # group may read, not connect
])
def test_the_egress_socket_must_keep_the_tenants_out(mode: int, group: str,
                                                     verdict: bool) -> None:
    reading = egress_socket_layer(ok(EgressSocket("/run/x.sock", "root", group, mode)))
    assert reading.verdict is verdict, reading.detail


def announce(state: AlertState, seen: dict, read: list[LayerReading], now: datetime
             ) -> tuple[list, AlertState, dict]:
    due, seen = due_layers(state.sovereignty, seen, read, now=now, unknown_grace=GRACE)
    messages, state = plan_sovereignty(state, due, hostname="box")
    return messages, state, seen


def test_a_tenant_leaving_the_box_is_announced_once_then_its_recovery() -> None:
    state, seen = AlertState(), {}
    messages, state, seen = announce(state, seen, layers(CONFINED), NOW)
    assert messages == []  # all in force from the start: nothing to say
    messages, state, seen = announce(state, seen, layers(LEAKING), NOW + timedelta(seconds=2))
    assert [m.title for m in messages] == ["mushishi on box: sovereignty layer tenants ✗"]
    assert messages[0].priority == PRIORITY_MAX
    assert messages[0].body.startswith(f"sovereignty layer tenants is NOT in force: {LEFT}")
    assert "refuses T1 work to that tenant's backends" in messages[0].body
    for later in range(3):  # the same state: never again, whatever the time
        again, state, seen = announce(state, seen, layers(LEAKING),
                                      NOW + timedelta(hours=later * 30))
        assert again == []
    messages, state, seen = announce(state, seen, layers(CONFINED), NOW + timedelta(days=2))
    assert [(m.title, m.kind) for m in messages] == [
        ("mushishi on box: sovereignty layer tenants ✓ again", "sovereignty")]
    assert "every running tenant is confined (web)" in messages[0].body
    assert state.sovereignty["tenants"] == "True:"


def test_another_tenant_failing_is_a_new_state() -> None:
    other = TenantsLayer(False, "tenant tts: it left", {"tts": False, "web": False},
                         {"tts": "tenant tts: it left", "web": LEFT})
    _, state, seen = announce(AlertState(), {}, layers(LEAKING), NOW)
    messages, _, _ = announce(state, seen, layers(other), NOW)
    assert [m.title for m in messages] == ["mushishi on box: sovereignty layer tenants ✗"]


def test_not_known_is_announced_only_once_it_has_lasted() -> None:
    _, state, seen = announce(AlertState(), {}, layers(CONFINED), NOW)
    messages, state, seen = announce(state, seen, layers(STARTING), NOW)
    assert messages == []
    messages, state, seen = announce(state, seen, layers(CONFINED), NOW + timedelta(seconds=2))
    assert messages == []  # a tenant that started: never a word
    _, state, seen = announce(state, seen, layers(STARTING), NOW + timedelta(seconds=3))
    messages, state, seen = announce(state, seen, layers(STARTING), NOW + timedelta(seconds=64))
    assert [m.title for m in messages] == ["mushishi on box: sovereignty layer tenants ?"]


def test_the_other_plans_keep_the_announced_layers() -> None:
    _, state, _ = announce(AlertState(), {}, layers(LEAKING), NOW)
    _, after = plan_watchdog(state, [], now=NOW, repeat_after=timedelta(hours=24),
                             heartbeat_weekday="monday", hostname="box")
    _, after = plan_unit_failure(after, "u.service", summary="s", records=[], now=NOW,
                                 repeat_after=timedelta(hours=24), hostname="box")
    assert after.sovereignty == state.sovereignty == {"tenants": "False:web"}
    assert AlertState.from_json(after.to_json()) == after
