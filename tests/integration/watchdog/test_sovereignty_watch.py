"""The sovereignty watch (mushishi-watchdog --follow-sovereignty) against real peers: the
router's /status stand-in on a unix socket, tenants' records written by the tenants' own
writer, a real unix socket for the egress, and the ntfy stand-in. One alert per change,
its recovery, nothing repeated after a restart of the watch, nothing lost while ntfy is
down."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

from mushishi.services.watchdog.app import Deps
from mushishi.services.watchdog.sovereignty import Follower, follow_sovereignty
from mushishi.shared.config.loader import load_settings
from mushishi.shared.notify import Notifier
from mushishi.shared.tenant_confinement import TenantRecord, write_record
from tests.standins.ntfy import NtfyStandin
from tests.standins.router_status import RouterStatusStandin, status_document

LEFT = ("from container web: a datagram to 203.0.113.1:9 reached 203.0.113.1 (ICMP port "
        "unreachable from 203.0.113.1): it left the box")
REFUSED = "from container web: the box's tenant firewall refused a datagram to 203.0.113.1:9"


class World:
    """A box's worth of sources in tmp_path."""

    def __init__(self, tmp_path: Path, ntfy_url: str) -> None:
        self.run_dir = tmp_path / "tenants"
        self.router_socket = tmp_path / "router.sock"
        self.egress_path = tmp_path / "egress.sock"
        self.egress = socket.socket(socket.AF_UNIX)
        self.egress.bind(str(self.egress_path))
        self.egress_path.chmod(0o660)
        config = tmp_path / "mushishi.toml"
        config.write_text(f"""
[router]
listen = ["127.0.0.1:4000", "unix:{self.router_socket}"]
egress_socket = "{self.egress_path}"
[ntfy]
url = "{ntfy_url}"
[watchdog]
state_dir = "{tmp_path / 'watchdog'}"
http_timeout_s = 2
""")
        self.settings = load_settings(config)
        self.deps = Deps(hostname="box", environ={"MUSHISHI_CREDENTIAL_NTFY_TOPIC": "t"},
                         notifier=Notifier({}), tenants_run_dir=self.run_dir)

    def publish(self, confined: bool | None, detail: str) -> None:
        directory = self.run_dir / "web"
        directory.mkdir(parents=True, exist_ok=True)
        write_record(directory, TenantRecord("web", "docker", confined, detail, time.time(),
                                             1.0, "203.0.113.1:9"))


async def wait_messages(ntfy: NtfyStandin, count: int, timeout: float = 15.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while len(ntfy.messages) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return [m.title or "" for m in ntfy.messages]


async def test_the_watch_alerts_once_per_change_of_the_tenants_layer_and_on_recovery(
        tmp_path: Path, ntfy: NtfyStandin) -> None:
    world = World(tmp_path, ntfy.url)
    router = RouterStatusStandin(status_document({}))
    await router.start(str(world.router_socket))
    world.publish(True, REFUSED)
    stop = asyncio.Event()
    watch = asyncio.create_task(follow_sovereignty(world.settings, world.deps, stop,
                                                   poll_s=0.1))
    try:
        await asyncio.sleep(0.5)
        assert ntfy.messages == []  # every layer in force: silence
        world.publish(False, LEFT)
        assert await wait_messages(ntfy, 1) == ["mushishi on box: sovereignty layer tenants ✗"]
        alert = ntfy.messages[0]
        assert alert.message.startswith(
            f"sovereignty layer tenants is NOT in force: tenant web: {LEFT}")
        assert alert.priority == 5
        await asyncio.sleep(0.5)  # five more polls of the same state
        assert len(ntfy.messages) == 1
        world.publish(True, REFUSED)
        assert await wait_messages(ntfy, 2) == [
            "mushishi on box: sovereignty layer tenants ✗",
            "mushishi on box: sovereignty layer tenants ✓ again"]
        assert "tenant web" in ntfy.messages[1].message
        # The router's own layers: a change there is its own alert.
        document = status_document({})
        document["sovereignty"]["connect_time"] = False
        document["sovereignty"]["detail"] = ("connect-time check disabled by "
                                             "MUSHISHI_TEST_DISABLE_CONNECT_CHECK (tests only)")
        router.document = document
        titles = await wait_messages(ntfy, 3)
        assert titles[2] == "mushishi on box: sovereignty layer connect-time ✗"
        assert "MUSHISHI_TEST_DISABLE_CONNECT_CHECK" in ntfy.messages[2].message
    finally:
        stop.set()
        assert await asyncio.wait_for(watch, 10) == 0
        await router.stop()
        world.egress.close()
    # A new watch remembers what was announced: the connect-time layer is not repeated.
    before = len(ntfy.messages)
    await router.start(str(world.router_socket))
    try:
        follower = Follower(world.settings, world.deps)
        await follower.poll()
        assert len(ntfy.messages) == before
    finally:
        await router.stop()


async def test_an_alert_waits_in_the_outbox_while_ntfy_is_down_and_is_retried(
        tmp_path: Path, ntfy: NtfyStandin) -> None:
    world = World(tmp_path, "http://127.0.0.1:9")  # nothing listens there
    world.publish(False, LEFT)
    follower = Follower(world.settings, world.deps)
    await follower.poll()  # the router is not answering: its layers are left alone
    assert follower.queued == 1
    assert follower.announced == {"tenants": "False:web"}
    assert len(list((tmp_path / "watchdog" / "outbox").iterdir())) == 1
    world.egress.close()
