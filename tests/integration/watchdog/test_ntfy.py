"""Alerts through the outbox to a stand-in ntfy speaking ntfy's publish API (started for real
on port 0): exact requests, rate limits, a server that is down, dedup, recovery, heartbeat.
Time is injected; nothing sleeps.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from mushishi.services.watchdog.app import Deps, enqueue_and_deliver
from mushishi.services.watchdog.checks import CheckResult, Status
from mushishi.services.watchdog.messages import AlertState, Message, plan_watchdog
from mushishi.services.watchdog.outbox import Outbox
from mushishi.shared.config import MushishiSettings
from mushishi.shared.config.loader import load_settings
from tests.standins.ntfy import NtfyStandin

TOPIC = "mushishi-7f3a9c"
TOKEN = "tk_0123456789abcdefghijklmnopqrs"
LOCAL = timezone(timedelta(hours=2))
MONDAY = datetime(2026, 3, 9, 7, 0, tzinfo=LOCAL)


class Clock:
    """Injected time: tests move it, nothing sleeps."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)


@pytest.fixture
async def ntfy() -> AsyncIterator[NtfyStandin]:
    server = NtfyStandin(token=TOKEN)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def settings_for(tmp_path: Path, url: str) -> MushishiSettings:
    config = tmp_path / "mushishi.toml"
    config.write_text(f"""
[ntfy]
url = "{url}"
[watchdog]
state_dir = "{tmp_path / 'watchdog'}"
repeat_after_h = 24
heartbeat_weekday = "monday"
""")
    return load_settings(config)


def deps_for(clock: Clock, *, token: str | None = TOKEN) -> Deps:
    environ = {"MUSHISHI_CREDENTIAL_NTFY_TOPIC": TOPIC}
    if token is not None:
        environ["MUSHISHI_CREDENTIAL_NTFY_TOKEN"] = token
    return Deps(now=clock, hostname="box", environ=environ, sleep=clock.sleep)


def one(message: Message) -> Callable[[AlertState], tuple[list[Message], AlertState]]:
    return lambda state: ([message], state)


def nothing(state: AlertState) -> tuple[list[Message], AlertState]:
    return [], state


PROBLEM = Message("problems", "mushishi on box: 1 problem", "- **disk:/data**: 93% used",
                  4, ("warning",))


async def test_json_publish_goes_to_the_root_url_with_exact_headers_and_body(
        ntfy: NtfyStandin, tmp_path: Path) -> None:
    clock = Clock(MONDAY)
    report = await enqueue_and_deliver(settings_for(tmp_path, ntfy.url), deps_for(clock),
                                       one(PROBLEM))
    assert (report.delivered, report.remaining) == (1, 0)
    [request] = ntfy.requests
    assert (request.method, request.path) == ("POST", "/")
    assert request.header("Content-Type") == "application/json"
    assert request.header("Authorization") == f"Bearer {TOKEN}"
    assert {name.lower() for name, _ in request.headers} == {
        "host", "content-type", "authorization", "accept", "accept-encoding", "user-agent",
        "content-length"}
    assert request.json() == {
        "topic": TOPIC, "title": "mushishi on box: 1 problem",
        "message": "- **disk:/data**: 93% used", "priority": 4, "tags": ["warning"],
        "markdown": True,
    }
    [stored] = ntfy.messages
    assert (stored.topic, stored.title, stored.priority, stored.markdown) == (
        TOPIC, "mushishi on box: 1 problem", 4, True)
    assert len(Outbox(tmp_path / "watchdog/outbox")) == 0


async def test_trailing_slash_in_server_url_still_publishes_to_root(
        ntfy: NtfyStandin, tmp_path: Path) -> None:
    await enqueue_and_deliver(settings_for(tmp_path, ntfy.url + "/"), deps_for(Clock(MONDAY)),
                              one(PROBLEM))
    assert [r.path for r in ntfy.requests] == ["/"]
    assert ntfy.messages[0].topic == TOPIC


async def test_without_a_token_credential_no_authorization_header_is_sent(
        tmp_path: Path) -> None:
    server = NtfyStandin(token=None)
    await server.start()
    try:
        await enqueue_and_deliver(settings_for(tmp_path, server.url),
                                  deps_for(Clock(MONDAY), token=None), one(PROBLEM))
    finally:
        await server.stop()
    assert server.requests[0].header("Authorization") is None
    assert len(server.messages) == 1


async def test_rate_limit_is_retried_after_an_injected_delay_not_dropped(
        ntfy: NtfyStandin, tmp_path: Path) -> None:
    ntfy.rate_limited_requests = 1
    clock = Clock(MONDAY)
    report = await enqueue_and_deliver(settings_for(tmp_path, ntfy.url), deps_for(clock),
                                       one(PROBLEM))
    assert clock.slept == [5.0]
    assert (report.delivered, report.remaining) == (1, 0)
    assert len(ntfy.requests) == 2 and ntfy.requests[0].body == ntfy.requests[1].body
    assert [m.title for m in ntfy.messages] == [PROBLEM.title]


async def test_persistent_rate_limit_keeps_the_message_for_the_next_run(
        ntfy: NtfyStandin, tmp_path: Path) -> None:
    ntfy.rate_limited_requests = 100
    clock = Clock(MONDAY)
    settings = settings_for(tmp_path, ntfy.url)
    report = await enqueue_and_deliver(settings, deps_for(clock), one(PROBLEM))
    assert clock.slept == [5.0, 15.0]
    assert (report.delivered, report.remaining) == (0, 1)
    assert "429 42901 limit reached" in (report.last_error or "")
    [queued] = Outbox(tmp_path / "watchdog/outbox").pending()
    assert queued.attempts == 3 and queued.message == PROBLEM

    ntfy.rate_limited_requests = 0
    report = await enqueue_and_deliver(settings, deps_for(clock), nothing)
    assert (report.delivered, report.remaining) == (1, 0)
    assert [m.message for m in ntfy.messages] == [PROBLEM.body]


async def test_server_down_keeps_alerts_in_the_outbox_and_the_next_run_delivers_in_order(
        tmp_path: Path) -> None:
    server = NtfyStandin(token=TOKEN)
    port = await server.start()
    await server.stop()  # ntfy is down
    clock = Clock(MONDAY)
    settings = settings_for(tmp_path, f"http://127.0.0.1:{port}")
    first = Message("unit-failed", "mushishi on box: a.service failed", "a", 4, ("x",))
    second = Message("unit-failed", "mushishi on box: b.service failed", "b", 4, ("x",))
    report = await enqueue_and_deliver(settings, deps_for(clock), one(first))
    assert (report.delivered, report.remaining) == (0, 1)
    assert "ClientConnectorError" in (report.last_error or "")
    clock.now += timedelta(minutes=1)
    report = await enqueue_and_deliver(settings, deps_for(clock), one(second))
    assert report.remaining == 2
    assert clock.slept == []  # an unreachable server is not retried in a loop

    await server.start(port=port)  # ntfy is back
    try:
        clock.now += timedelta(hours=1)
        report = await enqueue_and_deliver(settings, deps_for(clock), nothing)
    finally:
        await server.stop()
    assert (report.delivered, report.remaining) == (2, 0)
    assert [m.title for m in server.messages] == [first.title, second.title]


async def test_rejected_token_keeps_the_message_and_names_the_credential(
        ntfy: NtfyStandin, tmp_path: Path) -> None:
    report = await enqueue_and_deliver(settings_for(tmp_path, ntfy.url),
                                       deps_for(Clock(MONDAY), token="tk_wrong"), one(PROBLEM))
    assert (report.delivered, report.remaining) == (0, 1)
    assert "401 40101 unauthorized" in (report.last_error or "")
    assert "ntfy.token_credential" in (report.last_error or "")
    assert ntfy.messages == []


async def test_missing_topic_credential_queues_and_says_which_credential(
        ntfy: NtfyStandin, tmp_path: Path) -> None:
    deps = Deps(now=Clock(MONDAY), hostname="box", environ={}, sleep=Clock(MONDAY).sleep)
    report = await enqueue_and_deliver(settings_for(tmp_path, ntfy.url), deps, one(PROBLEM))
    assert report.remaining == 1 and ntfy.requests == []
    assert "'ntfy-topic' (ntfy.topic_credential) is missing" in (report.last_error or "")


def check(name: str, status: Status, detail: str = "d") -> CheckResult:
    return CheckResult(name, status, detail)


async def run(settings: MushishiSettings, clock: Clock, results: list[CheckResult]) -> None:
    def plan(state: AlertState) -> tuple[list[Message], AlertState]:
        return plan_watchdog(state, results, now=clock.now, repeat_after=timedelta(hours=24),
                             heartbeat_weekday="monday", hostname="box")

    await enqueue_and_deliver(settings, deps_for(clock), plan)


async def test_only_problems_dedup_recovery_and_heartbeat_reach_ntfy(
        ntfy: NtfyStandin, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, ntfy.url)
    clock = Clock(MONDAY)
    healthy = [check("disk:/", Status.OK), check("gpu", Status.MISSING_SOURCE, "no gpud")]
    sick = [check("disk:/", Status.PROBLEM, "95% used"),
            check("gpu", Status.MISSING_SOURCE, "no gpud")]
    await run(settings, clock, sick)            # Monday 07:00: problem + heartbeat
    for hours in (1, 2, 12):                    # same problem: deduplicated
        clock.now = MONDAY + timedelta(hours=hours)
        await run(settings, clock, sick)
    clock.now = MONDAY + timedelta(hours=13)
    await run(settings, clock, healthy)         # recovery
    for days in range(1, 7):                    # Tuesday..Sunday, all well: silence
        clock.now = MONDAY + timedelta(days=days)
        await run(settings, clock, healthy)
    clock.now = MONDAY + timedelta(days=7)      # next Monday: heartbeat
    await run(settings, clock, healthy)
    assert [(m.title, m.priority, m.tags) for m in ntfy.messages] == [
        ("mushishi on box: 1 problem", 4, ["warning"]),
        ("mushishi on box: weekly heartbeat", 2, ["green_heart"]),
        ("mushishi on box: all clear", 3, ["white_check_mark"]),
        ("mushishi on box: weekly heartbeat", 2, ["green_heart"]),
    ]
    assert "- **disk:/**: 95% used" in ntfy.messages[0].message
    assert "Not checked: gpu (no gpud)" in ntfy.messages[0].message
    state = json.loads((tmp_path / "watchdog/alerts.json").read_text())
    assert state["last_heartbeat"] == date(2026, 3, 16).isoformat()
    assert state["notified"] == {}
