"""What the firewall needs to know about the live host (adapters; roots injectable).

Listening and established sockets come from /proc/net (the caller's network namespace),
interfaces from /sys/class/net, routes and addresses from `ip -j`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

_TCP_LISTEN = "0A"
_TCP_ESTABLISHED = "01"
_UDP_UNCONNECTED = "07"


@dataclass(frozen=True, slots=True)
class Socket:
    """One socket from /proc/net/{tcp,tcp6,udp,udp6}."""

    proto: str
    local_address: str
    local_port: int
    remote_address: str
    remote_port: int
    state: str


def _address(hex_text: str) -> str:
    raw = bytes.fromhex(hex_text)
    # The kernel prints each 32-bit word in host (little-endian) order.
    swapped = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(swapped)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return str(address)


def _endpoint(text: str) -> tuple[str, int]:
    address, port = text.split(":")
    return _address(address), int(port, 16)


def sockets(proc_root: str | os.PathLike[str] = "/proc") -> list[Socket]:
    """Every TCP and UDP socket of the caller's network namespace."""
    found: list[Socket] = []
    for name in ("tcp", "tcp6", "udp", "udp6"):
        path = Path(proc_root) / "net" / name
        try:
            lines = path.read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local, remote = _endpoint(fields[1]), _endpoint(fields[2])
            found.append(Socket(name.rstrip("6"), local[0], local[1], remote[0], remote[1],
                                fields[3]))
    return found


def listening(all_sockets: list[Socket]) -> list[Socket]:
    """TCP sockets in LISTEN and bound, unconnected UDP sockets."""
    return [s for s in all_sockets
            if (s.proto == "tcp" and s.state == _TCP_LISTEN)
            or (s.proto == "udp" and s.state == _UDP_UNCONNECTED and s.local_port)]


def established_peers(all_sockets: list[Socket], local_port: int) -> list[str]:
    """Remote addresses of established TCP connections to `local_port` (inbound sessions)."""
    return sorted({s.remote_address for s in all_sockets
                   if s.proto == "tcp" and s.state == _TCP_ESTABLISHED
                   and s.local_port == local_port})


@dataclass(frozen=True, slots=True)
class Link:
    """A network interface: name, administratively up, bridge it is a port of."""

    name: str
    up: bool
    master: str | None


@dataclass(frozen=True, slots=True)
class Ip:
    """`ip` (iproute2) at an absolute path."""

    binary: str

    def _json(self, args: list[str]) -> list[dict[str, object]]:
        try:
            result = subprocess.run([self.binary, "-j", *args], capture_output=True, text=True,
                                    timeout=10, check=False)
        except FileNotFoundError:
            raise OSError(f"{self.binary} not found (set [firewall].ip to the ip binary)") \
                from None
        if result.returncode != 0 or not result.stdout.strip():
            return []
        data = json.loads(result.stdout)
        return data if isinstance(data, list) else []

    def route_interface(self, address: str) -> str | None:
        """The interface packets to `address` leave by (and, normally, arrive on)."""
        routes = self._json(["route", "get", address])
        device = routes[0].get("dev") if routes else None
        return str(device) if device else None

    def links(self) -> list[Link]:
        """Interfaces of the caller's network namespace (from netlink: /sys may belong to
        another namespace)."""
        found = []
        for link in self._json(["link", "show"]):
            flags = link.get("flags")
            master = link.get("master")
            found.append(Link(str(link["ifname"]),
                              isinstance(flags, list) and "UP" in flags,
                              str(master) if master else None))
        return found

    def has_address(self, interface: str) -> bool:
        """Does `interface` carry at least one IP address?"""
        links = self._json(["addr", "show", "dev", interface])
        return any(link.get("addr_info") for link in links)


PRIVILEGE_TOOLS = frozenset({"sudo", "su", "doas", "pkexec", "run0"})


def ssh_connection_env(pid: int | None = None,
                       proc_root: str | os.PathLike[str] = "/proc") -> tuple[str, int] | None:
    """(client address, server port) from $SSH_CONNECTION: this process's, else the one
    `sudo` (or su, doas, pkexec, run0) was started with.

    sudo drops SSH_CONNECTION from the command's environment but keeps it in its own,
    which root can read. Other ancestors are not consulted: their sessions are not ours.
    """
    if pid is None and os.environ.get("SSH_CONNECTION"):
        return _parse_ssh_connection(os.environ["SSH_CONNECTION"])
    current = pid if pid is not None else os.getppid()
    seen: set[int] = set()
    while current > 1 and current not in seen:
        seen.add(current)
        base = Path(proc_root) / str(current)
        try:
            status = dict(line.split(":\t", 1) for line in
                          (base / "status").read_text().splitlines() if ":\t" in line)
        except OSError:
            return None
        if status.get("Name", "").strip() in PRIVILEGE_TOOLS:
            try:
                environ = (base / "environ").read_bytes().split(b"\0")
            except OSError:
                environ = []
            for entry in environ:
                if entry.startswith(b"SSH_CONNECTION="):
                    return _parse_ssh_connection(entry.split(b"=", 1)[1].decode())
        parent = status.get("PPid", "0").strip()
        current = int(parent) if parent.isdigit() else 0
    return None


def _parse_ssh_connection(value: str) -> tuple[str, int] | None:
    parts = value.split()
    if len(parts) != 4 or not parts[3].isdigit():
        return None
    return parts[0], int(parts[3])
