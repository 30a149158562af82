"""A box, its neighbours and a container, as network namespaces (built and torn down here).

                      tailscale0 ┌────────────┐ lan0
    tailnet client  ─────────────┤    box     ├─────────────  LAN client
    100.64.0.2                   │ (host ns)  │              192.168.50.2
    fd7a:115c:a1e0::2            └─────┬──────┘              fd00:50::2
                                       │ docker0 (a real bridge, like Docker's)
                                  container 172.17.0.2, fd00:17::2

The box forwards (IPv4 and IPv6) and carries a stand-in for Docker's port publishing:
a `docker-sim` nat table that DNATs published host ports to the container, the way
Docker's own rules do. nft only ever runs inside these namespaces: the host's own
ruleset is never touched.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

PEERS = str(Path(__file__).with_name("peers.py"))


@dataclass(frozen=True)
class Side:
    """A client namespace and the box's address facing it."""

    namespace: str
    box_v4: str
    box_v6: str
    client_v4: str
    client_v6: str


@dataclass
class Topology:
    """The namespaces; `build()` creates them, `destroy()` removes every trace."""

    prefix: str = field(default_factory=lambda: f"mf{os.getpid() % 100000}{secrets.token_hex(2)}")
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.box = f"{self.prefix}-box"
        self.tailnet = Side(f"{self.prefix}-ts", "100.64.0.1", "fd7a:115c:a1e0::1",
                            "100.64.0.2", "fd7a:115c:a1e0::2")
        self.lan = Side(f"{self.prefix}-lan", "192.168.50.1", "fd00:50::1",
                        "192.168.50.2", "fd00:50::2")
        self.container = f"{self.prefix}-ctr"
        self.container_v4 = "172.17.0.2"
        self.container_v6 = "fd00:17::2"
        self.namespaces = [self.box, self.tailnet.namespace, self.lan.namespace,
                           self.container]

    # -- running things ------------------------------------------------------------------

    def run(self, namespace: str, argv: Sequence[str], *, check: bool = True,
            env: dict[str, str] | None = None, input: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside `namespace`."""
        result = subprocess.run(["ip", "netns", "exec", namespace, *argv], capture_output=True,
                                text=True, env=env, input=input, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} in {namespace} exited {result.returncode}:"
                                 f"\n{result.stdout}\n{result.stderr}")
        return result

    def nft(self, *args: str, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """nft inside the box."""
        return self.run(self.box, ["nft", *args], check=check, input=input)

    def start(self, namespace: str, argv: Sequence[str], **kwargs: object
              ) -> subprocess.Popen[str]:
        """Start a long-running process inside `namespace`; destroy() ends it."""
        process = subprocess.Popen(["ip", "netns", "exec", namespace, *argv],  # type: ignore[call-overload]
                                   text=True, **kwargs)
        self.processes.append(process)
        return process

    def listen(self, namespace: str, specs: Sequence[str]) -> None:
        """Serve `tcp:PORT`/`udp:PORT` inside `namespace` (returns once bound)."""
        process = self.start(namespace, [sys.executable, PEERS, "listen", *specs],
                             stdout=subprocess.PIPE)
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.strip() == "ready", f"listener in {namespace} did not start: {line!r}"

    def probe(self, namespace: str, targets: Sequence[str], timeout: float = 3.0
              ) -> dict[str, bool]:
        """Which targets (`tcp:ADDR:PORT`, `udp:[V6]:PORT`) answer from `namespace`."""
        result = self.run(namespace, [sys.executable, PEERS, "probe", str(timeout), *targets],
                          timeout=timeout * 4 + 30)
        return json.loads(result.stdout)

    # -- building ------------------------------------------------------------------------

    def build(self) -> Topology:
        """Create the namespaces, links, addresses, routes and the Docker stand-in."""
        for namespace in self.namespaces:
            subprocess.run(["ip", "netns", "add", namespace], check=True)
            self.run(namespace, ["ip", "link", "set", "lo", "up"])
        for side, name in ((self.tailnet, "tailscale0"), (self.lan, "lan0")):
            subprocess.run(["ip", "link", "add", name, "netns", self.box, "type", "veth",
                            "peer", "name", "eth0", "netns", side.namespace], check=True)
            self._address(self.box, name, f"{side.box_v4}/24", f"{side.box_v6}/64")
            self._address(side.namespace, "eth0", f"{side.client_v4}/24",
                          f"{side.client_v6}/64")
            self.run(side.namespace, ["ip", "route", "add", "default", "via", side.box_v4])
            self.run(side.namespace, ["ip", "-6", "route", "add", "default", "via",
                                      side.box_v6])
        self.run(self.box, ["ip", "link", "add", "docker0", "type", "bridge"])
        subprocess.run(["ip", "link", "add", "vethctr", "netns", self.box, "type", "veth",
                        "peer", "name", "eth0", "netns", self.container], check=True)
        self.run(self.box, ["ip", "link", "set", "vethctr", "master", "docker0"])
        self.run(self.box, ["ip", "link", "set", "vethctr", "up"])
        self._address(self.box, "docker0", "172.17.0.1/16", "fd00:17::1/64")
        self._address(self.container, "eth0", f"{self.container_v4}/16",
                      f"{self.container_v6}/64")
        self.run(self.container, ["ip", "route", "add", "default", "via", "172.17.0.1"])
        self.run(self.container, ["ip", "-6", "route", "add", "default", "via", "fd00:17::1"])
        for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
            self.run(self.box, ["sysctl", "-q", "-w", key])
        return self

    def _address(self, namespace: str, device: str, v4: str, v6: str) -> None:
        self.run(namespace, ["ip", "addr", "add", v4, "dev", device])
        self.run(namespace, ["ip", "addr", "add", v6, "dev", device, "nodad"])
        self.run(namespace, ["ip", "link", "set", device, "up"])

    def publish(self, ports: dict[int, int]) -> None:
        """Docker stand-in: DNAT host port -> container port, IPv4 and IPv6."""
        lines = ["table ip docker-sim {", "  chain prerouting {",
                 "    type nat hook prerouting priority dstnat; policy accept;"]
        lines += [f"    tcp dport {h} dnat to {self.container_v4}:{c}" for h, c in ports.items()]
        lines += ["  }", "}", "table ip6 docker-sim {", "  chain prerouting {",
                  "    type nat hook prerouting priority dstnat; policy accept;"]
        lines += [f"    tcp dport {h} dnat to [{self.container_v6}]:{c}"
                  for h, c in ports.items()]
        lines += ["  }", "}"]
        self.nft("-f", "-", input="\n".join(lines) + "\n")

    def destroy(self) -> None:
        """End every process started here and delete the namespaces."""
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + 10
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for namespace in self.namespaces:
            subprocess.run(["ip", "netns", "del", namespace], check=False,
                           capture_output=True)
