"""A tailnet address in [router] listen: the router's socket binds it at boot even when no
interface holds it yet (tailscaled comes up later), and serves it once one does."""

from __future__ import annotations

import tomlkit

from devtools.sandbox import Sandbox
from tests.paths import EXAMPLE_CONFIG

TAILNET_IP = "100.101.102.103"


def test_router_socket_binds_a_tailnet_address_before_the_interface_exists(
    fresh_sandbox: Sandbox,
) -> None:
    box = fresh_sandbox
    document = tomlkit.parse(EXAMPLE_CONFIG.read_text())
    document["gpu"]["probe"] = "simulated"
    document["router"]["listen"] = ["127.0.0.1:4000", f"{TAILNET_IP}:4000",
                                    "unix:/run/mushishi/router.sock"]
    box.install(tomlkit.dumps(document))
    box.systemctl("start", "mushishi-router.socket")
    assert box.is_active("mushishi-router.socket") == "active", \
        box.systemctl("status", "mushishi-router.socket", check=False).stdout
    listening = box.run(["ss", "-Hltn", f"src {TAILNET_IP}"]).stdout
    assert f"{TAILNET_IP}:4000" in listening
    # "tailscaled comes up": the address appears on an interface, and a client connects
    # to it (the kernel completes the handshake on the socket systemd holds).
    # (No dummy-interface module here: the address goes on lo, which is just as local.)
    box.run(["ip", "addr", "add", f"{TAILNET_IP}/32", "dev", "lo"])
    probe = box.run(["/bin/bash", "-c",
                     f"exec 3<>/dev/tcp/{TAILNET_IP}/4000 && echo connected"], check=False)
    assert "connected" in probe.stdout, probe.stderr
