"""Confined model servers in a real systemd, with the real dockerd and podman: Docker tenants
on mushishi's own network behind the tenant egress rules, Podman tenants in their unit's
cgroup (--cgroups=split), plain processes under IPAddressDeny=; every one started by
mushishi-tenant@.service and declared ready only once a probe from inside it is refused.

The sandbox's network namespace gets an uplink to a "cloud" host: a network namespace with
203.0.113.1 behind a veth, serving HTTP on port 8080 (its journal records every request)
and answering UDP port 9 with "port unreachable" (router.confinement_probe points there, so
an unconfined probe is positively seen reaching it). Images are built from busybox-static
and imported (no registry); Docker and Podman store them with the vfs driver.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from devtools.sandbox import Sandbox
from mushishi.firewall.render_ufw import docker_user_block
from mushishi.firewall.table import build_table
from mushishi.shared.config import load_settings
from tests.paths import BINDIR, REPO
from tests.system.gpu_box import PYTHON

GPU_STATE = "/run/mushishi/gpu-sim.json"
IMAGE = "mushishi-busybox:test"
# Debian's own CLI (another docker on PATH may not match dockerd 20.10).
DOCKER = "/usr/bin/docker"
CLOUD = "203.0.113.1"
NETWORK = f"""
set -e
ip netns add cloud
ip link add uplink type veth peer name eth0 netns cloud
ip addr add 198.51.100.2/24 dev uplink
ip link set uplink up
ip -n cloud addr add 198.51.100.1/24 dev eth0
ip -n cloud link set eth0 up
ip -n cloud link set lo up
ip -n cloud addr add {CLOUD}/32 dev lo
ip -n cloud route add 172.16.0.0/12 via 198.51.100.2
ip -n cloud route add 10.0.0.0/8 via 198.51.100.2
ip route add default via 198.51.100.1
"""
IMAGES = f"""
set -e
root=$(mktemp -d)
mkdir -p "$root/bin" "$root/www"
echo ok > "$root/www/index.html"
cp /bin/busybox "$root/bin/busybox"
for applet in sh httpd nc sleep cat env printf; do ln -s busybox "$root/bin/$applet"; done
tar -C "$root" -c . | /usr/bin/docker import - {IMAGE} >/dev/null
tar -C "$root" -c . | podman import - localhost/{IMAGE} >/dev/null
"""
HTTPD = ["httpd", "-f", "-p", "8080", "-h", "/www"]


def fetch_from_cloud(path: str) -> str:
    """A shell line that sends GET `path` to the cloud host (busybox wget crashes in a bare
    rootfs: nc it is)."""
    return f'printf "GET {path} HTTP/1.0\\r\\n\\r\\n" | nc -w 3 {CLOUD} 8080'



DOCKER_TENANT = ["/usr/bin/docker", "run", "--rm", "--init", "--name", "web-docker",
                 "--network=mushishi-tenants", "-p", "127.0.0.1:18080:8080", IMAGE, *HTTPD]
PODMAN_TENANT = ["/usr/bin/podman", "run", "--rm", "--replace", "--name", "web-podman",
                 # --pids-limit=-1: the sandbox's cgroup2 tree has no pids controller.
                 "--cgroups=split", "--pids-limit=-1", "--network=host",
                 # PID 1 ignores SIGTERM unless it handles it (podman has no --init here).
                 f"localhost/{IMAGE}", "sh", "-c",
                 'trap "exit 0" TERM; httpd -f -p 127.0.0.1:18081 -h /www & wait']
# The box before any tenant: keys every mushishi version knows.
BASE_CONFIG = f"""
[router]
confinement_probe = "{CLOUD}:9"

[gpu]
probe = "simulated"
simulated_state = "{GPU_STATE}"
"""
CONFIG = BASE_CONFIG + f"""tenant_probe_interval_s = 1

[modes.containers]
tenants = ["web-docker", "web-podman", "web-process"]

[modes.off]
tenants = []

[tenants.web-docker]
runtime = "docker"
command = {json.dumps(DOCKER_TENANT)}
health_url = "http://127.0.0.1:18080/"
vram_mib = 1
stop_timeout_s = 10
start_timeout_s = 60
env = {{ HF_HUB_OFFLINE = "0" }}

[tenants.web-podman]
runtime = "podman"
command = {json.dumps(PODMAN_TENANT)}
health_url = "http://127.0.0.1:18081/"
vram_mib = 1
stop_timeout_s = 10
start_timeout_s = 60

[tenants.web-process]
command = {json.dumps([PYTHON, str(REPO / "tests/standins/json_queue.py"), "--port", "18082"])}
health_url = "http://127.0.0.1:18082/health"
vram_mib = 1
stop_timeout_s = 10
"""
# The seed deployment's tenant: `docker run` on Docker's default bridge, and a container
# that phones home as it starts.
LEAKY = ["/usr/bin/docker", "run", "--rm", "--init", "--name", "leaky", "-p",
         "127.0.0.1:18090:8080", IMAGE, "sh", "-c",
         f"{fetch_from_cloud('/leak')}; exec {' '.join(HTTPD)}"]
LEAKY_TENANT = f"""
[tenants.leaky]
command = {json.dumps(LEAKY)}
health_url = "http://127.0.0.1:18090/"
vram_mib = 1
stop_timeout_s = 10
start_timeout_s = 30
"""


@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    sandbox = Sandbox()
    sandbox.boot()
    try:
        sandbox.run(NETWORK)
        sandbox.run(["systemd-run", "--unit=cloud-host", "--property=IgnoreOnIsolate=yes",
                     "ip", "netns", "exec", "cloud", PYTHON, "-u", "-m", "http.server", "8080",
                     "--bind", CLOUD])
        sandbox.run(f"for i in $(seq 150); do curl -so /dev/null http://{CLOUD}:8080/up && "
                    "exit 0; sleep 0.1; done; exit 1")
        sandbox.write("/etc/docker/daemon.json", '{"storage-driver": "vfs"}\n')
        sandbox.write("/etc/containers/storage.conf",
                      '[storage]\ndriver = "vfs"\nrunroot = "/run/containers/storage"\n'
                      'graphroot = "/var/lib/containers/storage"\n')
        sandbox.systemctl("start", "docker.service")
        sandbox.run(IMAGES, timeout=300)
        sandbox.write(GPU_STATE, json.dumps({"total_mib": 32607, "used_mib": 0,
                                             "processes": []}))
        sandbox.install(BASE_CONFIG)
        yield sandbox
    finally:
        sandbox.stop()


@pytest.fixture
def installed(box: Sandbox) -> Sandbox:
    """The box with CONFIG's tenants installed."""
    if box.path("/etc/mushishi/mushishi.toml").read_text() != CONFIG:
        box.install(CONFIG)
    return box


def record(box: Sandbox, tenant: str) -> dict | None:
    """The tenant's published confinement, or None when there is none."""
    path = box.path(f"/run/mushishi/tenants/{tenant}/confinement.json")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def wait_record(box: Sandbox, tenant: str, confined: bool | None, timeout: float = 30) -> dict:
    """Wait until the tenant's published result is `confined`; the record."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = record(box, tenant)
        if found is not None and found["confined"] is confined:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{tenant}: published {record(box, tenant)}, not confined={confined}")


def status_text(box: Sandbox, unit: str) -> str:
    return box.systemctl("show", "-p", "StatusText", "--value", unit).stdout.strip()


def cloud_requests(box: Sandbox) -> list[str]:
    """The request lines the cloud host logged."""
    return [line for line in box.journal("-u", "cloud-host", "-o", "cat").splitlines()
            if '"GET ' in line]


def curl(box: Sandbox, url: str) -> str:
    return box.run(["curl", "-sf", "--max-time", "5", url]).stdout


@pytest.fixture
def docker_tenant(installed: Sandbox) -> Iterator[Sandbox]:
    box = installed
    box.systemctl("start", "mushishi-tenant@web-docker.service", timeout=120)
    yield box
    box.systemctl("stop", "mushishi-tenant@web-docker.service", timeout=120)


def test_a_container_outside_mushishi_reaches_the_cloud_host(box: Sandbox) -> None:
    """The control: on this box, a container nobody confines does reach the cloud host, so
    the tests below would see a tenant's request if one got through."""
    before = len(cloud_requests(box))
    box.run([DOCKER, "run", "--rm", IMAGE, "sh", "-c", fetch_from_cloud("/control")])
    assert [line for line in cloud_requests(box)[before:] if "GET /control" in line]


def test_the_docker_client_lists_and_stops_a_container_outside_mushishi(box: Sandbox) -> None:
    """The one Docker Engine client (services/tenant/docker_api.py) as gpu-prepare's
    stop-list uses it, against the real dockerd: every running container is listed by
    name; stopping one stops it and nothing else, and stopping it again is no error."""
    for name in ("ollama-box", "keep-me"):
        box.run([DOCKER, "run", "-d", "--init", "--name", name, IMAGE, "sleep", "600"])
    code = ("import json, sys\n"
            "from mushishi.services.tenant.docker_api import DockerEngine\n"
            "docker = DockerEngine('unix:///var/run/docker.sock')\n"
            "before = sorted(c.name for c in docker.running())\n"
            "[target] = [c for c in docker.running() if c.name == 'ollama-box']\n"
            "docker.stop([target.id], seconds=5)\n"
            "docker.stop([target.id, 'f' * 64], seconds=5)\n"
            "print(json.dumps([before, sorted(c.name for c in docker.running())]))\n")
    try:
        before, after = json.loads(box.run([PYTHON, "-c", code]).stdout.splitlines()[-1])
        assert {"ollama-box", "keep-me"} <= set(before)
        assert "ollama-box" not in after and "keep-me" in after
        assert box.run([DOCKER, "inspect", "-f", "{{.State.Running}}", "ollama-box"]
                       ).stdout.strip() == "false"
        assert box.run([DOCKER, "inspect", "-f", "{{.State.Running}}", "keep-me"]
                       ).stdout.strip() == "true"
    finally:
        box.run([DOCKER, "rm", "-f", "ollama-box", "keep-me"], check=False)


def test_a_docker_tenant_on_the_default_bridge_never_reaches_the_cloud_host(
        box: Sandbox) -> None:
    """The seed deployment's tenant (`docker run` on the default bridge, nothing else
    configured) phones home as it starts: mushishi must not let it run."""
    before = len(cloud_requests(box))
    try:
        box.write("/etc/mushishi/mushishi.toml", BASE_CONFIG + LEAKY_TENANT)
        installed = box.run([f"{BINDIR}/mushishi", "install", "--bindir", BINDIR],
                            check=False)
        box.systemctl("start", "mushishi-tenant@leaky.service", check=False, timeout=60)
        time.sleep(4)  # the container's nc gives up after 3 s
        assert cloud_requests(box)[before:] == [], "a tenant's container reached the cloud"
        assert box.is_active("mushishi-tenant@leaky.service") == "failed"
        # Refused by the config itself, at install and at the tenant's start, naming the key.
        assert "tenants.leaky.runtime" in installed.stdout + installed.stderr
        assert status_text(box, "mushishi-tenant@leaky.service").startswith(
            "invalid config /etc/mushishi/mushishi.toml: tenants.leaky.runtime: the command "
            "runs docker")
    finally:
        box.systemctl("stop", "mushishi-tenant@leaky.service", check=False)
        box.run([DOCKER, "rm", "-f", "leaky"], check=False)
        box.install(BASE_CONFIG)


def test_a_docker_tenant_asking_for_the_default_bridge_is_refused_with_one_line(
        installed: Sandbox) -> None:
    box = installed
    before = len(cloud_requests(box))
    try:
        box.install(CONFIG + LEAKY_TENANT.replace("[tenants.leaky]",
                                                  '[tenants.leaky]\nruntime = "docker"'))
        box.systemctl("start", "mushishi-tenant@leaky.service", check=False, timeout=60)
        assert box.is_active("mushishi-tenant@leaky.service") == "failed"
        assert status_text(box, "mushishi-tenant@leaky.service") == (
            "tenant leaky: container leaky would join network bridge; a Docker tenant may "
            "join only mushishi-tenants (add --network=mushishi-tenants to "
            "tenants.leaky.command)")
        assert box.run([DOCKER, "ps", "-aq", "--filter", "name=leaky"]).stdout == ""
        time.sleep(1)
        assert cloud_requests(box)[before:] == []
    finally:
        box.systemctl("stop", "mushishi-tenant@leaky.service", check=False)
        box.install(CONFIG)


def test_a_docker_tenant_is_confined_and_the_host_still_reaches_its_port(
        docker_tenant: Sandbox) -> None:
    box = docker_tenant
    assert box.is_active("mushishi-tenant@web-docker.service") == "active"
    published = wait_record(box, "web-docker", True)
    assert published["detail"] == (
        f"from container web-docker: the box's tenant firewall refused a datagram to {CLOUD}:9"
        " (ICMP communication administratively prohibited from 172.30.240.1)")
    assert "confined: from container web-docker" in status_text(
        box, "mushishi-tenant@web-docker.service")
    # The router's side: the published port on loopback.
    assert curl(box, "http://127.0.0.1:18080/") == "ok\n"
    # The container's side: the cloud host is out of reach, a local network is not refused.
    before = len(cloud_requests(box))
    leak = box.run([DOCKER, "exec", "web-docker", "sh", "-c",
                    fetch_from_cloud("/from-a-tenant")], check=False)
    assert leak.returncode != 0 and "No route to host" in leak.stderr, leak
    assert cloud_requests(box)[before:] == []
    # Telemetry off inside the container; the tenant's own override wins, with a warning.
    env = box.run([DOCKER, "exec", "web-docker", "env"]).stdout.splitlines()
    assert {"VLLM_NO_USAGE_STATS=1", "DO_NOT_TRACK=1", "TRANSFORMERS_OFFLINE=1",
            "HF_HUB_OFFLINE=0"} <= set(env)
    journal = box.journal("-u", "mushishi-tenant@web-docker.service", "-o", "cat")
    assert "tenants.web-docker.env sets HF_HUB_OFFLINE='0' over the default" in journal


def test_removing_the_rule_by_hand_flips_the_published_result(docker_tenant: Sandbox
                                                              ) -> None:
    box = docker_tenant
    wait_record(box, "web-docker", True)
    pid = box.systemctl("show", "-p", "MainPID", "--value",
                        "mushishi-tenant@web-docker.service").stdout.strip()
    box.run(["nft", "delete", "table", "inet", "mushishi_tenants"])
    unconfined = wait_record(box, "web-docker", False)
    assert unconfined["detail"] == (
        f"from container web-docker: a datagram to {CLOUD}:9 reached {CLOUD} (ICMP port "
        f"unreachable from {CLOUD}): it left the box")
    assert "NOT CONFINED" in status_text(box, "mushishi-tenant@web-docker.service")
    # The UFW rendering's DOCKER-USER block confines it just as well.
    from mushishi.firewall.tenant_egress import TenantEgress

    settings = load_settings(box.path("/etc/mushishi/mushishi.toml"))
    block = docker_user_block(build_table(settings.firewall), "ipv4",
                              TenantEgress.from_settings(settings))
    box.run(["iptables-restore", "--noflush"], input=block)
    wait_record(box, "web-docker", True)
    box.run("iptables -F mushishi-tenant-egress && iptables -A mushishi-tenant-egress -j RETURN")
    wait_record(box, "web-docker", False)
    # Restarting the rules' unit puts them back without restarting the tenant.
    box.systemctl("restart", "mushishi-tenant-network.service")
    wait_record(box, "web-docker", True)
    assert box.systemctl("show", "-p", "MainPID", "--value",
                         "mushishi-tenant@web-docker.service").stdout.strip() == pid


def test_a_container_joining_another_network_is_reported_by_name(docker_tenant: Sandbox
                                                                 ) -> None:
    box = docker_tenant
    wait_record(box, "web-docker", True)
    box.run([DOCKER, "network", "connect", "bridge", "web-docker"])
    try:
        attached = wait_record(box, "web-docker", False)
        assert attached["detail"] == ("tenant web-docker: container web-docker is attached to "
                                      "network bridge; a Docker tenant may join only "
                                      "mushishi-tenants")
    finally:
        box.run([DOCKER, "network", "disconnect", "bridge", "web-docker"])
    wait_record(box, "web-docker", True)


def test_a_stopped_docker_tenant_leaves_no_container_and_no_record(installed: Sandbox) -> None:
    box = installed
    box.systemctl("start", "mushishi-tenant@web-docker.service", timeout=120)
    wait_record(box, "web-docker", True)
    box.systemctl("stop", "mushishi-tenant@web-docker.service", timeout=120)
    assert box.run([DOCKER, "ps", "-aq", "--filter", "name=web-docker"]).stdout == ""
    assert not box.path("/run/mushishi/tenants/web-docker").exists()


def test_a_podman_tenant_with_split_cgroups_is_confined_by_its_unit(installed: Sandbox) -> None:
    box = installed
    box.systemctl("start", "mushishi-tenant@web-podman.service", timeout=120)
    try:
        published = wait_record(box, "web-podman", True)
        assert published["detail"].startswith("from cgroup libpod-payload-")
        assert published["detail"].endswith(
            f"the tenant's unit: the kernel refused a datagram to {CLOUD}:9 (EPERM)")
        assert curl(box, "http://127.0.0.1:18081/") == "ok\n"
        before = len(cloud_requests(box))
        leak = box.run(["podman", "exec", "web-podman", "sh", "-c",
                        fetch_from_cloud("/from-a-tenant")], check=False)
        assert leak.returncode != 0, leak
        assert cloud_requests(box)[before:] == []
        env = box.run(["podman", "exec", "web-podman", "env"]).stdout.splitlines()
        assert {"VLLM_NO_USAGE_STATS=1", "HF_HUB_OFFLINE=1"} <= set(env)
    finally:
        box.systemctl("stop", "mushishi-tenant@web-podman.service", timeout=120)


def test_a_podman_tenant_without_split_cgroups_is_refused(installed: Sandbox) -> None:
    box = installed
    unsplit = [part for part in PODMAN_TENANT if part != "--cgroups=split"]
    extra = (f"\n[tenants.unsplit]\nruntime = \"podman\"\ncommand = {json.dumps(unsplit)}\n"
             'health_url = "http://127.0.0.1:18081/"\nvram_mib = 1\n')
    try:
        box.write("/etc/mushishi/mushishi.toml", CONFIG + extra)
        box.systemctl("start", "mushishi-tenant@unsplit.service", check=False, timeout=60)
        assert box.is_active("mushishi-tenant@unsplit.service") == "failed"
        assert status_text(box, "mushishi-tenant@unsplit.service") == (
            "invalid config /etc/mushishi/mushishi.toml: tenants.unsplit.command: `podman run` "
            "without --cgroups=split puts the container outside this unit's cgroup, where "
            "IPAddressDeny= does not confine it: add --cgroups=split")
        assert box.run(["podman", "ps", "-aq"]).stdout == ""
    finally:
        box.systemctl("stop", "mushishi-tenant@unsplit.service", check=False)
        box.install(CONFIG)


def test_a_process_tenant_is_confined_by_ip_address_deny(installed: Sandbox) -> None:
    box = installed
    box.systemctl("start", "mushishi-tenant@web-process.service", timeout=120)
    try:
        published = wait_record(box, "web-process", True)
        assert published["detail"] == (f"from the tenant's unit: the kernel refused a datagram "
                                       f"to {CLOUD}:9 (EPERM)")
        assert published["runtime"] == "process"
    finally:
        box.systemctl("stop", "mushishi-tenant@web-process.service", timeout=120)


# -- the fourth layer, end to end: router, mushishi status, the sovereignty watch -----------

TOPIC = "mushishi-tenants-topic"
# The router in front of the Docker tenant (its published port), a T1 profile over it, and
# alerts to the ntfy stand-in.
WATCHED = CONFIG + """
[backends.web]
url = "http://127.0.0.1:18080/v1"
model = "web"
health_url = "http://127.0.0.1:18080/"

[profiles.private]
tier = "T1"
chain = ["web"]
queue_timeout_s = 1

[ntfy]
url = "http://127.0.0.1:PORT"
"""


class Ntfy:
    """The ntfy stand-in in the sandbox's network namespace, and what it accepted."""

    def __init__(self, box: Sandbox) -> None:
        self.port_file = box.shared / "ntfy.port"
        self.record = box.shared / "ntfy.jsonl"
        self.process = subprocess.Popen(
            box.net_command([sys.executable, "-m", "tests.standins.ntfy", "--port-file",
                             str(self.port_file), "--record", str(self.record)]), cwd=REPO)
        deadline = time.monotonic() + 30
        while not self.port_file.exists() and time.monotonic() < deadline:
            assert self.process.poll() is None, "the ntfy stand-in died"
            time.sleep(0.05)
        self.port = int(self.port_file.read_text())

    def sovereignty(self) -> list[dict]:
        """The sovereignty alerts received, oldest first."""
        if not self.record.exists():
            return []
        bodies = [json.loads(json.loads(line)["body"])
                  for line in self.record.read_text().splitlines() if line]
        return [b for b in bodies if "sovereignty layer" in b.get("title", "")]

    def wait(self, count: int, timeout: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.sovereignty()) < count and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.sovereignty()


def router_get(box: Sandbox, path: str) -> tuple[int, dict]:
    result = box.run(["curl", "-s", "--max-time", "10", "--unix-socket",
                      "/run/mushishi/router.sock", "-w", "\n%{http_code}",
                      f"http://router{path}"], check=False)
    body, _, code = result.stdout.rpartition("\n")
    return int(code or 0), json.loads(body) if body else {}


def mushishi_status(box: Sandbox) -> tuple[int, dict, str]:
    """(exit status, --json report, screen)."""
    report = box.run([f"{BINDIR}/mushishi", "status", "--json", "--timeout", "5"],
                     check=False, timeout=60)
    screen = box.run([f"{BINDIR}/mushishi", "status", "--timeout", "5"], check=False,
                     timeout=60)
    return report.returncode, json.loads(report.stdout), screen.stdout


def wait_router(box: Sandbox, tenants: bool) -> dict:
    deadline = time.monotonic() + 30
    status: dict = {}
    while time.monotonic() < deadline:
        code, status = router_get(box, "/status")
        if code == 200 and status["sovereignty"]["tenants"] is tenants:
            return status
        time.sleep(0.2)
    raise AssertionError(f"the router's tenants layer is not {tenants}: {status}")


@pytest.fixture
def watched(docker_tenant: Sandbox) -> Iterator[tuple[Sandbox, Ntfy]]:
    """The Docker tenant running, with the router and the sovereignty watch in front of it."""
    box = docker_tenant
    ntfy = Ntfy(box)
    try:
        box.install(WATCHED.replace("PORT", str(ntfy.port)), credentials={"ntfy-topic": TOPIC})
        wait_record(box, "web-docker", True)
        box.systemctl("start", "mushishi-router.service", "mushishi-sovereignty.service")
        box.wait_for("mushishi-sovereignty.service", "active")
        yield box, ntfy
    finally:
        box.systemctl("stop", "mushishi-sovereignty.service", "mushishi-router.service",
                      check=False)
        ntfy.process.terminate()
        ntfy.process.wait(timeout=10)
        box.systemctl("restart", "mushishi-tenant-network.service", check=False)


def test_removing_a_tenant_rule_alerts_once_closes_t1_and_recovers(
        watched: tuple[Sandbox, Ntfy]) -> None:
    box, ntfy = watched
    status = wait_router(box, True)
    assert status["sovereignty"]["summary"] == "config ✓, connect-time ✓, kernel ✓, tenants ✓"
    assert status["sovereignty"]["tenant_verdicts"] == {"web-docker": True}
    assert status["profiles"]["private"]["would_use"] == "web"
    code, report, screen = mushishi_status(box)
    assert report["tenants"]["tenants"]["web-docker"]["confined"] is True
    assert "sovereignty: config ✓, connect-time ✓, kernel ✓, tenants ✓" in screen
    assert "tenants   web-docker ✓ from container web-docker" in screen
    assert ntfy.sovereignty() == []

    box.run(["nft", "delete", "table", "inet", "mushishi_tenants"])  # by hand
    wait_record(box, "web-docker", False)
    (alert,) = ntfy.wait(1)
    assert alert["title"].endswith(": sovereignty layer tenants ✗")
    assert alert["message"].startswith(
        "sovereignty layer tenants is NOT in force: tenant web-docker: from container "
        f"web-docker: a datagram to {CLOUD}:9 reached {CLOUD}")
    assert alert["priority"] == 5
    # The router carries it, and closes the tenant's backend to T1 work.
    status = wait_router(box, False)
    assert status["sovereignty"]["summary"] == "config ✓, connect-time ✓, kernel ✓, tenants ✗"
    assert status["sovereignty"]["tenants_detail"].startswith("tenant web-docker: ")
    assert status["profiles"]["private"]["would_use"] is None
    assert ("refused for T1: served by tenant web-docker, which is not confined"
            in status["profiles"]["private"]["reason"])
    code, ready = router_get(box, "/ready")
    assert ready["sovereignty"]["tenants"] is False
    assert "private" not in ready["servable_profiles"]
    line = box.systemctl("show", "-p", "StatusText", "--value", "mushishi-router").stdout
    deadline = time.monotonic() + 15  # the STATUS= line is refreshed every 10 s
    while "tenants ✗" not in line and time.monotonic() < deadline:
        time.sleep(0.5)
        line = box.systemctl("show", "-p", "StatusText", "--value",
                             "mushishi-router").stdout
    assert "sovereignty: config ✓, connect-time ✓, kernel ✓, tenants ✗" in line
    code, report, screen = mushishi_status(box)
    assert code == 1
    assert report["tenants"]["verdict"] is False
    assert any(problem.startswith("sovereignty layer tenants is not in force: tenant "
                                  "web-docker: ") for problem in report["problems"])
    assert "tenants ✗" in screen
    assert "tenants   web-docker ✗ from container web-docker: a datagram to" in screen
    time.sleep(5)  # more polls, the same state: no second alert
    assert len(ntfy.sovereignty()) == 1

    box.systemctl("restart", "mushishi-tenant-network.service")  # the rules are back
    wait_record(box, "web-docker", True)
    alerts = ntfy.wait(2)
    assert [a["title"].rpartition(": ")[2] for a in alerts] == [
        "sovereignty layer tenants ✗", "sovereignty layer tenants ✓ again"]
    assert "for tenant web-docker" in alerts[1]["message"]
    status = wait_router(box, True)
    assert status["profiles"]["private"]["would_use"] == "web"
    assert mushishi_status(box)[1]["tenants"]["verdict"] is True
