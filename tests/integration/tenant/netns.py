"""Network namespaces for the tenant tests: a tenant's own namespace behind a "box" that
forwards to a "cloud" host, each a real namespace with real nftables (the host's own
network and ruleset are never touched).

    tenant 10.88.0.2 ── veth ── 10.88.0.1 box 198.51.100.2 ── veth ── 198.51.100.1 cloud
                                                                     203.0.113.1 (on lo)

`Namespaces(kind="tenant-only")` is a single namespace with a veth whose far end nobody
answers, and a default route through it: a datagram to anywhere is sent and vanishes.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Sequence

CLOUD = "203.0.113.1"
TENANT_NETWORK = "10.88.0.0/24"
BOX_ON_TENANT_SIDE = "10.88.0.1"


class Namespaces:
    """Build with `build()`, remove every trace with `destroy()`."""

    def __init__(self, *, with_box: bool = True) -> None:
        prefix = f"mt{os.getpid() % 100000}{secrets.token_hex(2)}"
        self.tenant = f"{prefix}-tenant"
        self.box = f"{prefix}-box" if with_box else None
        self.cloud = f"{prefix}-cloud" if with_box else None
        self.names = [n for n in (self.tenant, self.box, self.cloud) if n]
        self.processes: list[subprocess.Popen[bytes]] = []

    def run(self, namespace: str, argv: Sequence[str] | str, *, check: bool = True,
            input: str | None = None, timeout: float = 60
            ) -> subprocess.CompletedProcess[str]:
        """`argv` (a string runs under sh -c) inside `namespace`."""
        command = ["sh", "-c", argv] if isinstance(argv, str) else list(argv)
        result = subprocess.run(["ip", "netns", "exec", namespace, *command], text=True,
                                capture_output=True, input=input, timeout=timeout,
                                check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{command} in {namespace} exited {result.returncode}:\n"
                                 f"{result.stdout}{result.stderr}")
        return result

    def nft(self, namespace: str, ruleset: str) -> None:
        """Load `ruleset` with nft -f inside `namespace`."""
        self.run(namespace, ["nft", "-f", "-"], input=ruleset)

    def build(self) -> Namespaces:
        """Create the namespaces, links, addresses and routes."""
        for name in self.names:
            subprocess.run(["ip", "netns", "add", name], check=True)
            self.run(name, "ip link set lo up")
        if self.box is None or self.cloud is None:
            self.run(self.tenant, "ip link add v0 type veth peer name v1 && ip link set v0 up "
                                  "&& ip link set v1 up && ip addr add 10.99.0.2/24 dev v0 && "
                                  "ip route add default via 10.99.0.1")
            return self
        self._link(self.tenant, "eth0", self.box, "tenant0")
        self._link(self.box, "uplink", self.cloud, "eth0")
        self.run(self.tenant, f"ip addr add 10.88.0.2/24 dev eth0 && "
                              f"ip route add default via {BOX_ON_TENANT_SIDE}")
        self.run(self.box, f"ip addr add {BOX_ON_TENANT_SIDE}/24 dev tenant0 && "
                           "ip addr add 198.51.100.2/24 dev uplink && "
                           "ip route add default via 198.51.100.1 && "
                           "sysctl -qw net.ipv4.ip_forward=1")
        self.run(self.cloud, f"ip addr add 198.51.100.1/24 dev eth0 && "
                             f"ip addr add {CLOUD}/32 dev lo && "
                             f"ip route add {TENANT_NETWORK} via 198.51.100.2")
        return self

    def _link(self, left: str, left_name: str, right: str, right_name: str) -> None:
        subprocess.run(["ip", "link", "add", left_name, "netns", left, "type", "veth", "peer",
                        "name", right_name, "netns", right], check=True)
        self.run(left, f"ip link set {left_name} up")
        self.run(right, f"ip link set {right_name} up")

    def start(self, namespace: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        """A long-running process inside `namespace`; destroy() ends it."""
        process = subprocess.Popen(["ip", "netns", "exec", namespace, *argv],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def destroy(self) -> None:
        """End the processes and delete the namespaces."""
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()
            if process.stdout is not None:
                process.stdout.close()
        for name in self.names:
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
