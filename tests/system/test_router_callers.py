"""Callers of the router's unix socket are identified by what they are, not by the uid they
share (issue 13, hole 2): a unit that reads T1 prompts (a tenant, here the real tenant
template running curl instead of a model server) may reach only sovereign profiles, with or
without a key, and a T1 prompt it sends to a T3 profile never reaches the provider.

The sandbox's network namespace gets the "cloud" address 203.0.113.10 on lo; the provider
and the local backend are host processes inside it. The real router and egress run from
their units.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.sandbox import Sandbox
from tests.system.host_standins import (
    CloudWorld,
    HostStandins,
    cloud_config,
    cloud_world,
    recorded,
)

KEY = "sk-callers-system-test"
PROVIDER_KEY = "nvapi-callers-system-test"
CLOUD = "203.0.113.10"
SOCKET = "/run/mushishi/router.sock"
MARKER = "T1-PROMPT-MARKER-laundered-through-the-router"
CONFIG = cloud_config(CLOUD, KEY, ["private", "cloudy"], router="""\
unix_peers = { mushishi = ["private"], mushishi-bench = ["private", "cloudy"] }""", rest="""
[bench]
targets = ["profile:private", "profile:cloudy"]
max_tokens = 8
repeats = 1
""")
# The tenant template (User=mushishi, IPAddressDeny=any, no egress group) running curl.
TENANT_DROPIN = """[Service]
Type=oneshot
ExecStartPre=
ExecStart=
ExecStart=/usr/bin/curl -s --max-time 20 --unix-socket {socket} -w "\\\\nHTTP %{{http_code}}\\\\n" \
  -H "Content-Type: application/json" {auth} -d @/etc/mushishi-test/{name}.json \
  http://router/v1/chat/completions
ExecStop=
WatchdogSec=0
"""


World = CloudWorld


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    def servers(standins: HostStandins, records: Path) -> None:
        standins.start("tests.standins.cloud", "--host", CLOUD, "--port", "8443", "--model",
                       "moonshotai/kimi-k2.6", "--key", PROVIDER_KEY, "--record", str(records))
        standins.start("tests.standins.vllm", "--host", "127.0.0.1", "--port", "8001",
                       "--model", "cpu-alias", "--name", "cpu")

    # unix_peers names users that only this install creates: config check accepts them.
    with cloud_world(CONFIG, {"ngc-api-key": PROVIDER_KEY}, CLOUD, servers) as world:
        yield world


def as_tenant(box: Sandbox, name: str, profile: str, *, key: str | None) -> tuple[int, dict]:
    """Run the tenant unit `mushishi-tenant@NAME` as a curl of the router's unix socket:
    (HTTP status, JSON body)."""
    box.write(f"/etc/mushishi-test/{name}.json", json.dumps({
        "model": profile, "messages": [{"role": "user", "content": f"{MARKER} ({name})"}]}))
    auth = f'-H "Authorization: Bearer {key}"' if key else ""
    unit = f"mushishi-tenant@{name}.service"
    box.write(f"/etc/systemd/system/{unit}.d/zzz-test.conf",
              TENANT_DROPIN.format(socket=SOCKET, auth=auth, name=name))
    box.systemctl("daemon-reload")
    box.systemctl("start", unit, timeout=60)
    shown = box.systemctl("show", unit, "-p", "User", "-p", "IPAddressDeny",
                          "-p", "SupplementaryGroups").stdout
    assert "User=mushishi" in shown and "IPAddressDeny=" in shown, shown
    assert "mushishi-egress" not in shown, shown
    output = box.journal("-u", unit, "-o", "cat")
    body, _, status = output.strip().rpartition("\nHTTP ")
    return int(status.split()[0]), json.loads(body.strip().splitlines()[-1])


def test_a_tenant_with_a_key_cannot_send_a_t1_prompt_to_a_t3_profile(world: World) -> None:
    status, body = as_tenant(world.box, "laundry-key", "cloudy", key=KEY)
    assert not [r for r in recorded(world.records) if MARKER in json.dumps(r)], \
        "the provider received a tenant's T1 prompt"
    assert status == 403, body
    assert body["error"]["code"] == "profile_forbidden"
    assert "mushishi-tenant@laundry-key.service" in body["error"]["message"]


def test_a_tenant_still_reaches_a_sovereign_profile(world: World) -> None:
    status, body = as_tenant(world.box, "private-peer", "private", key=None)
    assert status == 200, body
    status, body = as_tenant(world.box, "private-key", "private", key=KEY)
    assert status == 200, body


def test_the_bench_unit_has_its_own_user_and_still_reaches_its_profiles(world: World) -> None:
    box = world.box
    before = len(recorded(world.records))
    box.systemctl("start", "mushishi-bench.service", timeout=300)
    shown = box.systemctl("show", "mushishi-bench.service", "-p", "Result", "-p", "User").stdout
    assert "Result=success" in shown and "User=mushishi-bench\n" in shown, shown
    rows = box.run(["cat", "/var/lib/mushishi/bench/results.csv"]).stdout
    assert ",profile:private," in rows and ",profile:cloudy," in rows, rows
    assert len(recorded(world.records)) > before  # the T3 profile reached the provider
