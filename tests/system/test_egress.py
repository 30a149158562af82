"""mushishi-egress as a real unit in a booted systemd, behind the real router, in front of
stand-in cloud providers on a non-local address: the credential, the peer and sovereignty
checks at its socket, kernel confinement of every other unit, a SIGKILL mid-stream counted
once, and restarts of the router and the egress under load that fail no request.

The sandbox's network namespace gets the "cloud" address 203.0.113.10 on lo (reachable from
inside, outside router.local_networks); the providers are host processes inside it.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.sandbox import Sandbox
from mushishi.ctl.install import shipped_unit_names
from tests.paths import BINDIR
from tests.system import router_load
from tests.system.host_standins import (
    CloudWorld,
    HostStandins,
    cloud_config,
    cloud_world,
    recorded,
)

KEY = "sk-egress-system-test"
PROVIDER_KEY = "nvapi-system-test"
CLOUD = "203.0.113.10"
EGRESS_SOCKET = "/run/mushishi/egress.sock"
CONFIG = cloud_config(CLOUD, KEY, ["private", "cloudy", "slow"], drain_timeout_s=20,
                      kimi="budget = { requests_per_day = 100000 }", backends=f"""
[backends.slow]
url = "http://{CLOUD}:8444/v1"
model = "slow-model"
api_key_credential = "ngc-api-key"
""", more_profiles="""
[profiles.slow]
tier = "T3"
chain = ["slow"]
""")
BUDGETS = ("import json; from mushishi.shared.config import load_settings; "
           "from mushishi.services.egress.ledger import read_budgets; "
           "print(json.dumps(read_budgets(load_settings('/etc/mushishi/mushishi.toml'))))")


World = CloudWorld


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    def providers(standins: HostStandins, records: Path) -> None:
        def provider(port: int, model: str, *extra: str) -> None:
            standins.start("tests.standins.cloud", "--host", CLOUD, "--port", str(port),
                           "--model", model, "--key", PROVIDER_KEY, "--record", str(records),
                           *extra)

        provider(8443, "moonshotai/kimi-k2.6")
        provider(8444, "slow-model", "--tokens", "300", "--token-delay", "0.05")

    with cloud_world(CONFIG, {"ngc-api-key": PROVIDER_KEY}, CLOUD, providers) as world:
        yield world


def cloud_requests(world: World) -> list[dict]:
    return recorded(world.records)


def chat(box: Sandbox, profile: str, *extra: str) -> tuple[int, str]:
    result = box.run(["curl", "-s", "--max-time", "60", "-w", "\n%{http_code}",
                      "-H", f"Authorization: Bearer {KEY}", "-H", "Content-Type: application/json",
                      "-d", json.dumps({"model": profile, "messages": [
                          {"role": "user", "content": f"a question for {profile}"}]}),
                      *extra, "http://127.0.0.1:4000/v1/chat/completions"])
    body, _, code = result.stdout.rpartition("\n")
    return int(code), body


def egress_direct(box: Sandbox, user: str | None, profile: str, tier: str
                  ) -> subprocess.CompletedProcess[str]:
    """curl the egress socket as root (None), `user` with its own groups, or "router": user
    mushishi with the router unit's supplementary group mushishi-egress."""
    prefix: list[str] = []
    if user == "router":
        prefix = ["/usr/bin/setpriv", "--reuid=mushishi", "--regid=mushishi",
                  "--groups=mushishi-egress", "--"]
        user = None
    return box.run([*prefix, "curl", "-s", "--max-time", "20", "--unix-socket", EGRESS_SOCKET,
                    "-w", "\n%{http_code}", "-H", "Content-Type: application/json",
                    "-H", f"X-Mushishi-Profile: {profile}", "-H", f"X-Mushishi-Tier: {tier}",
                    "-H", "X-Mushishi-Backend: kimi", "-d", json.dumps({
                        "messages": [{"role": "user", "content": f"straight from {profile}"}]}),
                    "http://egress/v1/chat/completions"], user=user, check=False)


def budgets(box: Sandbox) -> dict:
    return json.loads(box.run([f"{BINDIR}/python", "-c", BUDGETS]).stdout)


def test_a_cloud_hop_reaches_the_provider_through_the_egress_unit_with_its_credential(
    world: World,
) -> None:
    box = world.box
    code, body = chat(box, "cloudy", "-D", "/dev/stderr")
    assert code == 200, body
    assert json.loads(body)["choices"][0]["message"]["content"].startswith("cloud-0")
    sent = [r for r in cloud_requests(world) if "a question for cloudy" in json.dumps(r["body"])]
    assert len(sent) == 1
    assert sent[0]["headers"]["Authorization"] == f"Bearer {PROVIDER_KEY}"
    assert KEY not in json.dumps(sent[0]["headers"])
    records = [json.loads(line) for line in box.journal(
        "-u", "mushishi-egress", "MUSHISHI_PROFILE=cloudy", "-o", "json").splitlines()]
    served = [r for r in records if r.get("MUSHISHI_OUTCOME") == "success"]
    assert served and served[-1]["MUSHISHI_BACKEND"] == "kimi"
    assert served[-1]["_SYSTEMD_UNIT"] == "mushishi-egress.service"
    assert "a question for cloudy" not in box.journal("-u", "mushishi-egress", "-o", "json")
    status = box.systemctl("show", "-p", "StatusText", "--value", "mushishi-egress").stdout
    assert "serving 2 cloud backend(s)" in status
    assert "on /run/mushishi/egress.sock (socket from systemd)" in \
        box.journal("-u", "mushishi-egress")


def test_the_egress_socket_refuses_t1_work_and_every_uid_but_the_routers(
    world: World,
) -> None:
    box = world.box
    box.systemctl("start", "mushishi-egress.service")
    before = len(cloud_requests(world))
    refused = egress_direct(box, "router", "private", "T1")
    body, _, code = refused.stdout.rpartition("\n")
    assert (code, json.loads(body)["error"]["code"]) == ("403", "sovereignty_refused")
    lying = egress_direct(box, "router", "private", "T2")  # a router claiming T2
    body, _, code = lying.stdout.rpartition("\n")
    assert (code, json.loads(body)["error"]["code"]) == ("403", "sovereignty_refused")
    as_root = egress_direct(box, None, "cloudy", "T3")  # root may open the socket: refused
    body, _, code = as_root.stdout.rpartition("\n")
    assert (code, json.loads(body)["error"]["code"]) == ("403", "peer_forbidden")
    as_nobody = egress_direct(box, "65534", "cloudy", "T3")  # the file mode keeps it out
    assert as_nobody.returncode == 7, as_nobody  # curl: could not connect
    # The router's uid without its group, as the CPU floor and the tenants run (they see T1
    # prompts): the file mode keeps them out too.
    as_floor = egress_direct(box, "mushishi", "cloudy", "T3")
    assert as_floor.returncode == 7, as_floor
    floor_groups = box.systemctl("show", "-p", "SupplementaryGroups", "--value",
                                 "mushishi-cpu-floor.service").stdout.split()
    assert "mushishi-egress" not in floor_groups
    allowed = egress_direct(box, "router", "cloudy", "T3")
    assert allowed.stdout.rpartition("\n")[2] == "200"
    assert len(cloud_requests(world)) == before + 1
    assert not [r for r in cloud_requests(world)
                if "straight from private" in json.dumps(r["body"])]
    metrics = box.run(["curl", "-s", "http://127.0.0.1:9641/metrics"]).stdout
    assert 'mushishi_egress_sovereignty_refusals_total{reason="sovereign_tier"} 2.0' in metrics
    assert "mushishi_egress_peer_refusals_total 1.0" in metrics


def confinement(box: Sandbox, unit: str) -> tuple[str, str]:
    shown = box.systemctl("show", "-p", "IPAddressDeny", "-p", "RestrictAddressFamilies",
                          unit).stdout
    values = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
    return values.get("IPAddressDeny", ""), values.get("RestrictAddressFamilies", "")


def test_the_egress_is_the_only_mushishi_unit_without_ip_address_deny(world: World) -> None:
    box = world.box
    units = []
    for name in shipped_unit_names():
        if name.endswith(".service"):
            units.append(name.replace("@.service", "@probe.service"))
    unconfined = []
    for unit in units:
        deny, families = confinement(box, unit)
        denied_everything = "0.0.0.0/0" in deny.split() and "::/0" in deny.split()
        no_ip_sockets = bool(families) and "AF_INET" not in families.split() \
            and "AF_INET6" not in families.split() and not families.startswith("~")
        if not (denied_everything or no_ip_sockets):
            unconfined.append(unit)
    assert unconfined == ["mushishi-egress.service"], unconfined
    assert len(units) >= 10
    # The control: the egress unit really has none, and the router really has it.
    assert confinement(box, "mushishi-egress.service")[0] == ""
    assert "0.0.0.0/0" in confinement(box, "mushishi-router.service")[0]


def test_sigkill_mid_stream_is_counted_once_and_the_unit_comes_back(world: World) -> None:
    box = world.box
    box.systemctl("start", "mushishi-egress.service")
    code, _ = chat(box, "slow")  # 300 tokens at 20/s: a whole answer, counted exactly
    assert code == 200
    exact = budgets(box)["slow"]
    assert (exact["requests_used"], exact["estimated_requests"]) == (1, 0)
    stream = router_load.stream(box, KEY, "slow", "a long one", 60)
    try:
        assert stream.stdout is not None
        seen = 0
        while seen < 40:  # 2 s of the stream: checkpointed at least once
            seen += stream.stdout.readline().startswith(b"data: {")
        pid = box.systemctl("show", "-p", "MainPID", "--value", "mushishi-egress").stdout.strip()
        box.systemctl("kill", "-s", "SIGKILL", "mushishi-egress.service")
        rest, _ = stream.communicate(timeout=60)
    finally:
        router_load.reap(stream)
    assert b"[DONE]" not in rest and b"backend_failed" in rest  # ended with an error event
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = box.systemctl("show", "-p", "MainPID", "--value", "mushishi-egress").stdout.strip()
        if box.is_active("mushishi-egress.service") == "active" and now not in ("0", pid):
            break
        time.sleep(0.2)
    else:
        raise AssertionError("systemd did not restart mushishi-egress after SIGKILL")
    after = budgets(box)["slow"]
    assert (after["requests_used"], after["estimated_requests"]) == (2, 1), after
    assert after["requests_in_flight"] == 0
    assert after["tokens_used"] > exact["tokens_used"]
    assert "was in flight when mushishi-egress stopped without settling it" in \
        box.journal("-u", "mushishi-egress")
    box.systemctl("restart", "mushishi-egress.service")  # a clean restart counts nothing more
    assert budgets(box)["slow"] == after


def test_restarts_of_router_and_egress_under_load_fail_nothing_and_count_each_once(
    world: World,
) -> None:
    box = world.box
    box.systemctl("start", "mushishi-egress.service")
    before = budgets(box)["kimi"]["requests_used"]
    out = box.shared / "egress-load.json"
    # Twice what the four restarts took when last measured (1,200 requests ended 0.05 s before
    # the last restart did), so the load outlasts them on a faster or slower machine.
    count = 2400
    load = router_load.start(box, KEY, count, 8, out, "cloudy")
    stream = router_load.stream(box, KEY, "slow", "stream", 90)
    try:
        time.sleep(0.5)
        for unit in ("mushishi-egress.service", "mushishi-router.service",
                     "mushishi-egress.service", "mushishi-router.service"):
            box.systemctl("restart", unit, timeout=90)
            time.sleep(0.5)
        restarted = time.time()
        assert load.wait(timeout=300) == 0
        streamed, _ = stream.communicate(timeout=90)
    finally:
        router_load.reap(load, stream)
    results = json.loads(out.read_text())
    assert len(results) == count
    failures = [r for r in results if r.get("status") != 200]
    assert failures == [], failures[:5]
    assert max(r["started"] for r in results) > restarted  # the load outlasted the restarts
    assert streamed.rstrip().endswith(b"data: [DONE]"), streamed[-300:]
    assert budgets(box)["kimi"]["requests_used"] == before + count
    log = box.journal("-u", "mushishi-egress", "-o", "cat")
    assert log.count("stopping: draining") >= 2


def test_the_egress_unit_is_hardened(world: World) -> None:
    exposure = world.box.run(["systemd-analyze", "security", "mushishi-egress.service"],
                             check=False).stdout
    level = float(exposure.rsplit("Overall exposure level for", 1)[1].split(":")[1].split()[0])
    assert level <= 1.5, exposure[-1500:]  # 1.2 when written, without IPAddressDeny=


def test_mushishi_audit_reads_the_units_record_as_root_and_as_a_group_member(
    world: World,
) -> None:
    """After this module's traffic: the real unit's state directory lets root and members of
    group mushishi read the audit (and nobody else), reading disturbs nothing, and no prompt
    is in it."""
    box = world.box
    box.systemctl("start", "mushishi-egress.service")
    mushishi = f"{BINDIR}/mushishi"
    as_root = box.run([mushishi, "audit", "--json"])
    rows = [json.loads(line) for line in as_root.stdout.splitlines()]
    kinds = {(r["profile"], r["tier"], r["outcome"], r["reason"]) for r in rows}
    assert {("cloudy", "T3", "served", ""), ("slow", "T3", "served", ""),
            ("private", "T1", "refused", "sovereign_tier"),  # straight to the socket
            ("cloudy", "T3", "refused", "peer_forbidden"),  # root at the socket
            ("slow", "T3", "failed", "interrupted")} <= kinds, kinds  # the SIGKILL mid-stream
    assert sum(r["profile"] == "cloudy" and r["outcome"] == "served" for r in rows) >= 1200
    private = [(r["outcome"], r["bytes_out"]) for r in rows if r["profile"] == "private"]
    assert private == [("refused", 0), ("refused", 0)]  # straight to the socket, T1 and "T2"
    human = box.run([mushishi, "audit", "--since", "1d"]).stdout
    assert "  private: 0 requests left the box (2 refused)" in human
    assert "a question for" not in as_root.stdout + human  # the prompts of this module

    state = "/var/lib/mushishi/egress"
    assert box.run(["stat", "-c", "%a %U %G", state]).stdout.split() == \
        ["750", "mushishi", "mushishi"]
    owners = box.run(f"stat -c '%n %U %G %a' {state}/*").stdout.splitlines()
    assert owners and all(line.split()[1:3] == ["mushishi", "mushishi"] for line in owners), \
        owners  # root's read left no file of its own behind
    found = box.run(f"cat {state}/ledger.sqlite3* | grep -a -c -e 'a question for' "
                    "-e 'straight from'", check=False)
    assert found.stdout.strip() == "0", found  # no prompt in the ledger, its WAL or -shm

    for user, groups in (("auditor", ["-G", "mushishi"]), ("stranger", [])):
        if box.run(["id", user], check=False).returncode != 0:
            box.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", *groups,
                     user])
    member = box.run([mushishi, "audit", "--json", "--profile", "private"], user="auditor",
                     check=False)
    assert member.returncode == 0, member.stderr
    assert [json.loads(line)["reason"] for line in member.stdout.splitlines()] == \
        ["sovereign_tier", "sovereign_tier"]
    stranger = box.run([mushishi, "audit"], user="stranger", check=False)
    assert stranger.returncode == 1
    assert "permission denied (run as root or as a member of group mushishi)" in \
        stranger.stderr, stranger.stderr
    code, _ = chat(box, "cloudy")  # the running egress never noticed the readers
    assert code == 200
