"""The confinement probe against real kernels' answers: sent by the real helper from inside
a tenant's network namespace, through a box with real nftables rules (the tenant egress
table as rendered, among others), to a cloud host."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv4Network

import pytest

from mushishi.firewall.tenant_egress import TenantEgress, render_tenant_nft
from tests.integration.tenant.netns import (
    BOX_ON_TENANT_SIDE,
    CLOUD,
    TENANT_NETWORK,
    Namespaces,
)

UDP_ECHO = ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.bind(('{CLOUD}', 9))\nprint('ready', flush=True)\n"
            "while True:\n    data, peer = s.recvfrom(512)\n    s.sendto(data, peer)\n")


@pytest.fixture
def net() -> Iterator[Namespaces]:
    namespaces = Namespaces().build()
    yield namespaces
    namespaces.destroy()


def probe_from_tenant(net: Namespaces, host: str = CLOUD, port: int = 9,
                      box_networks: tuple[str, ...] = (TENANT_NETWORK,)) -> dict:
    """The helper's answer, sent from inside the tenant's namespace (entered via a pid)."""
    sleeper = net.start(net.tenant, ["sleep", "60"])
    result = subprocess.run(
        [sys.executable, "-m", "mushishi.services.tenant.inside", "--pid", str(sleeper.pid),
         "--host", host, "--port", str(port), "--wait", "1",
         *(f"--box-network={n}" for n in box_networks)],
        capture_output=True, text=True, check=True, timeout=30)
    return json.loads(result.stdout)


def forward_rule(verdict: str) -> str:
    return ("table inet t {\n chain forward {\n  type filter hook forward priority 0; "
            f'policy accept;\n  iifname "tenant0" {verdict}\n }}\n}}\n')


def test_an_unconfined_tenant_reaches_the_cloud_host_which_answers(net: Namespaces) -> None:
    assert probe_from_tenant(net) == {
        "confined": False,
        "detail": f"a datagram to {CLOUD}:9 reached {CLOUD} (ICMP port unreachable from "
                  f"{CLOUD}): it left the box"}


def test_the_boxs_admin_prohibited_reject_counts_as_confined(net: Namespaces) -> None:
    net.nft(net.box, forward_rule("reject with icmpx type admin-prohibited"))
    assert probe_from_tenant(net) == {
        "confined": True,
        "detail": f"the box's tenant firewall refused a datagram to {CLOUD}:9 (ICMP "
                  f"communication administratively prohibited from {BOX_ON_TENANT_SIDE})"}


def test_the_same_answer_from_outside_the_box_networks_is_not_confinement(net: Namespaces
                                                                          ) -> None:
    net.nft(net.box, forward_rule("reject with icmpx type admin-prohibited"))
    answer = probe_from_tenant(net, box_networks=())
    assert answer["confined"] is False
    assert f"reached {BOX_ON_TENANT_SIDE}" in answer["detail"]


def test_a_silent_drop_cannot_be_told_from_leaving(net: Namespaces) -> None:
    net.nft(net.box, forward_rule("drop"))
    assert probe_from_tenant(net) == {
        "confined": False,
        "detail": f"a datagram to {CLOUD}:9 left: nothing refused it within 1 s"}


def test_a_port_unreachable_reject_by_the_box_is_not_mistaken_for_confinement(
        net: Namespaces) -> None:
    net.nft(net.box, forward_rule("reject"))  # nft's default: ICMP port unreachable
    assert probe_from_tenant(net)["confined"] is False


def test_the_kernel_refusing_to_send_counts_as_confined(net: Namespaces) -> None:
    net.nft(net.tenant, "table inet t {\n chain output {\n  type filter hook output priority 0;"
                        ' policy accept;\n  oif "lo" accept\n  drop\n }\n}\n')
    assert probe_from_tenant(net) == {
        "confined": True, "detail": f"the kernel refused a datagram to {CLOUD}:9 (EPERM)"}


def test_no_route_at_the_box_or_in_the_tenant_is_not_known(net: Namespaces) -> None:
    net.run(net.box, "ip route del default")
    at_box = probe_from_tenant(net)
    assert at_box["confined"] is None
    assert at_box["detail"].startswith(f"the box has no route to {CLOUD}:9 (ICMP network "
                                       f"unreachable from {BOX_ON_TENANT_SIDE})")
    net.run(net.tenant, "ip route del default")
    assert probe_from_tenant(net) == {
        "confined": None, "detail": f"no route to {CLOUD}:9 (ENETUNREACH): confinement "
                                    "cannot be shown on this network"}


def test_a_reply_from_the_probe_address_means_it_left(net: Namespaces) -> None:
    echo = net.start(net.cloud, [sys.executable, "-c", UDP_ECHO])
    assert echo.stdout is not None and echo.stdout.readline().strip() == b"ready"
    assert probe_from_tenant(net) == {"confined": False,
                                      "detail": f"{CLOUD}:9 replied to a datagram: it left "
                                                "the box"}


def test_the_rendered_tenant_egress_table_confines_and_keeps_local_networks_open(
        net: Namespaces) -> None:
    egress = TenantEgress("tenant0", IPv4Network(TENANT_NETWORK),
                          (IPv4Network("127.0.0.0/8"), IPv4Network("198.51.100.0/24")))
    net.nft(net.box, render_tenant_nft(egress))
    assert probe_from_tenant(net)["confined"] is True
    # A local network is reachable (the box's uplink neighbour answers "port unreachable")...
    local = probe_from_tenant(net, host="198.51.100.1")
    assert local["confined"] is False and "reached 198.51.100.1" in local["detail"]
    # ...except for name resolution, which is refused even there.
    assert probe_from_tenant(net, host="198.51.100.1", port=53)["confined"] is True
    # The helper cannot enter a process that is gone: not known, with the reason.
    gone = subprocess.run(
        [sys.executable, "-m", "mushishi.services.tenant.inside", "--pid", "999999999",
         "--host", CLOUD, "--port", "9"], capture_output=True, text=True, check=True)
    assert json.loads(gone.stdout) == {"confined": None,
                                       "detail": "process 999999999 is gone (no "
                                                 "/proc/999999999/cgroup)"}
