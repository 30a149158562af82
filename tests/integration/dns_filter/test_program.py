"""The DNS filter program, loaded into this machine's kernel and run on packets
(BPF_PROG_TEST_RUN): the same verifier and interpreter/JIT that judge a confined unit's
traffic, without a unit. Root only, like the booted-systemd tests."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

import pytest

from mushishi.services.dns_filter import bpf
from mushishi.services.dns_filter.program import dns_filter, expected_verdicts, probe_packet

TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58


@pytest.fixture
def load() -> Iterator:
    fds: list[int] = []

    def loader(*nameservers: str) -> int:
        assert os.geteuid() == 0, "loading a BPF program needs root (CAP_BPF, CAP_NET_ADMIN)"
        fd = bpf.load_cgroup_skb(dns_filter([ip_address(n) for n in nameservers]), "test")
        fds.append(fd)
        return fd

    yield loader
    for fd in fds:
        os.close(fd)


def ipv4_with_options(destination: str, protocol: int, port: int) -> bytes:
    """IHL 6: the port sits 4 bytes later than in a plain header."""
    transport = struct.pack(">HH", 40000, port) + bytes(4)
    return struct.pack(">BBHHHBBH4s4s", 0x46, 0, 24 + len(transport), 0, 0, 64, protocol, 0,
                       bytes([127, 0, 0, 1]), IPv4Address(destination).packed) + \
        b"\x01\x01\x01\x00" + transport


def ipv6_with_next_header(next_header: int, destination: str = "::1") -> bytes:
    body = bytes([UDP, 0]) + bytes(6) + struct.pack(">HH", 40000, 53) + bytes(4)
    return struct.pack(">IHBB16s16s", 6 << 28, len(body), next_header, 64,
                       IPv6Address("::1").packed, IPv6Address(destination).packed) + body


@pytest.mark.parametrize(("what", "packet", "verdict"), [
    ("udp to resolved's stub", probe_packet(IPv4Address("127.0.0.53"), UDP, 53), 0),
    ("tcp to a local dnsmasq", probe_packet(IPv4Address("127.0.0.1"), TCP, 53), 0),
    ("udp to Tailscale's MagicDNS", probe_packet(IPv4Address("100.100.100.100"), UDP, 53), 0),
    ("DNS over TLS", probe_packet(IPv4Address("100.64.0.7"), TCP, 853), 0),
    ("udp over IPv6", probe_packet(IPv6Address("fd7a:115c:a1e0::53"), UDP, 53), 0),
    ("IPv4 options before the port", ipv4_with_options("127.0.0.1", UDP, 53), 0),
    ("IPv6 fragment header", ipv6_with_next_header(44), 0),
    ("IPv6 hop-by-hop header", ipv6_with_next_header(0), 0),
    ("a backend", probe_packet(IPv4Address("127.0.0.1"), TCP, 8000), 1),
    ("a tailnet client's reply", probe_packet(IPv4Address("100.64.0.7"), TCP, 51234), 1),
    ("port 53 as a source only", struct.pack(">BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, UDP, 0,
                                             bytes(4), bytes([127, 0, 0, 1]))
     + struct.pack(">HH", 53, 40000) + bytes(4), 1),
    ("IPv4 options, another port", ipv4_with_options("127.0.0.1", UDP, 54), 1),
    ("ICMP", struct.pack(">BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, ICMP, 0, bytes(4),
                         bytes([127, 0, 0, 1])) + bytes(8), 1),
    ("ICMPv6", ipv6_with_next_header(ICMPV6), 1),
])
def test_dns_is_dropped_and_everything_else_passes(load, what: str, packet: bytes,
                                                   verdict: int) -> None:
    assert bpf.run_on_packet(load(), packet) == verdict, what


@pytest.mark.parametrize("nameserver", ["127.0.0.53", "10.0.0.200", "fd7a:115c:a1e0::53"])
def test_dns_reaches_exactly_the_nameservers_it_was_built_with(load, nameserver: str) -> None:
    """10.0.0.200: an address whose last byte has the high bit set (a 64-bit compare would
    sign-extend it and never match)."""
    fd = load(nameserver)
    server = ip_address(nameserver)
    assert bpf.run_on_packet(fd, probe_packet(server, UDP, 53)) == 1
    assert bpf.run_on_packet(fd, probe_packet(server, TCP, 53)) == 1
    neighbour = ip_address(int(server) + 1)
    assert bpf.run_on_packet(fd, probe_packet(neighbour, UDP, 53)) == 0
    for what, packet, expected in expected_verdicts([server]):
        assert bpf.run_on_packet(fd, packet) == expected, what


def run_cli(*args: str, mount_bpffs: Path | None = None) -> subprocess.CompletedProcess[str]:
    """mushishi-dns-filter in a private mount namespace (a BPF filesystem of its own)."""
    command = [sys.executable, "-m", "mushishi.services.dns_filter", *args]
    script = 'exec "$@"' if mount_bpffs is None else \
        f'mount -t bpf bpf {mount_bpffs} && "$@" && ls {mount_bpffs}/mushishi'
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           script, "sh", *command], capture_output=True, text=True,
                          check=False, env={**os.environ, "NOTIFY_SOCKET": ""})


def test_the_command_pins_the_program_on_a_bpf_filesystem(tmp_path: Path) -> None:
    result = run_cli(f"{tmp_path}/mushishi/no-dns", "--nameserver", "127.0.0.53",
                     mount_bpffs=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["no-dns"]
    assert "pinned" in result.stderr and "DNS only to 127.0.0.53" in result.stderr


def test_the_command_refuses_a_directory_that_is_not_a_bpf_filesystem(tmp_path: Path) -> None:
    result = run_cli(f"{tmp_path}/mushishi/no-dns")
    assert result.returncode == 1
    assert f"{tmp_path}/mushishi is not on a BPF filesystem" in result.stderr
    assert "mount -t bpf bpf /sys/fs/bpf" in result.stderr
