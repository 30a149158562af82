"""Locality by address: strict URL parsing, and every trick that must not count as local."""

from __future__ import annotations

import socket
from ipaddress import ip_network
from pathlib import Path

import pytest

from mushishi.shared.locality import (
    AddressError,
    address_is_local,
    backend_locality,
    parse_backend_url,
)

NETWORKS = [ip_network("127.0.0.0/8"), ip_network("::1/128"), ip_network("100.64.0.0/10")]
LOCAL_HOSTS = ["llm.tailnet.example"]


@pytest.mark.parametrize(("url", "local"), [
    ("http://127.0.0.1:8000/v1", True),
    ("https://127.0.0.1:8000/v1", True),
    ("http://[::1]:8000/v1", True),
    ("http://100.100.1.2:8000/v1", True),  # tailnet
    ("unix:/run/vllm.sock", True),
    ("http://llm.tailnet.example:8000/v1", True),  # listed hostname
    ("http://LLM.Tailnet.Example.:8000/v1", True),  # case and trailing dot
    ("http://[::ffff:127.0.0.1]:8000/v1", True),  # IPv4-mapped loopback is loopback
    ("http://[::ffff:8.8.8.8]:80/v1", False),  # IPv4-mapped public address
    ("http://[::ffff:192.168.1.5]:80/v1", False),
    ("http://10.0.0.5:8000/v1", False),  # private range outside local_networks
    ("http://192.168.1.20:8000/v1", False),
    ("http://172.16.0.1:8000/v1", False),
    ("http://[fe80::1%25eth0]:8000/v1", False),  # link-local
    ("http://[fd00::1]:8000/v1", False),  # ULA outside local_networks
    ("http://0.0.0.0:8000/v1", False),
    ("http://localhost:8000/v1", False),  # a hostname, and not listed
    ("http://evil.example.com/v1", False),
    ("http://2130706433:8000/v1", False),  # 127.0.0.1 as a decimal number: not a literal
    ("http://0x7f.1:8000/v1", False),  # inet_aton spelling
    ("http://127.1:8000/v1", False),  # short form
    ("http://017700000001/v1", False),  # octal
    ("http://100.63.255.255/v1", False),  # just below the tailnet range
    ("http://100.128.0.0/v1", False),  # just above it
], ids=lambda value: str(value))
def test_backend_locality_table(url: str, local: bool) -> None:
    assert backend_locality(url, NETWORKS, LOCAL_HOSTS).local is local


@pytest.mark.parametrize("url", [
    "http://127.0.0.1@evil.example.com/v1",  # userinfo: the host is evil.example.com
    "http://evil.example.com@127.0.0.1/v1",  # userinfo in front of a local host
    "http://user:pass@127.0.0.1:8000/v1",
    "http://evil.example.com#@127.0.0.1/v1",  # fragment trick
    "http://127.0.0.1:8000/v1?redirect=http://evil",  # query
    "http://127.0.0.1:8000\\@evil.example.com/v1",  # backslash
    "http://127.0.0.1 :8000/v1",  # whitespace
    "http://127.0.0.1:8000\n.evil.example.com/v1",  # control character
    "ftp://127.0.0.1/v1",
    "file:///etc/passwd",
    "http://127.0.0.1:0/v1",
    "http://127.0.0.1:70000/v1",
    "http://127.0.0.1:80a/v1",
    "http://[::1/v1",
    "http://[127.0.0.1]/v1",  # an IPv4 address is not an IPv6 literal
    "http:///v1",
    "unix:relative.sock",
    "unix://run/x.sock",
    "",
])
def test_malformed_or_tricky_url_is_rejected_and_never_local(url: str) -> None:
    with pytest.raises(AddressError):
        parse_backend_url(url)
    assert backend_locality(url, NETWORKS, LOCAL_HOSTS).local is False


def test_listed_hostname_resolving_outside_local_networks_is_not_local() -> None:
    verdict = backend_locality("http://llm.tailnet.example:8000/v1", NETWORKS, LOCAL_HOSTS,
                               resolve=lambda host: ["100.64.0.7", "203.0.113.9"])
    assert verdict.local is False
    assert "203.0.113.9" in verdict.reason


def test_listed_hostname_resolving_inside_local_networks_is_local() -> None:
    verdict = backend_locality("http://llm.tailnet.example:8000/v1", NETWORKS, LOCAL_HOSTS,
                               resolve=lambda host: ["100.64.0.7", "::1"])
    assert verdict.local is True


def test_listed_hostname_that_does_not_resolve_now_stays_local_by_listing() -> None:
    def fail(host: str) -> list[str]:
        raise OSError("Name or service not known")

    verdict = backend_locality("http://llm.tailnet.example/v1", NETWORKS, LOCAL_HOSTS,
                               resolve=fail)
    assert verdict.local is True
    assert "checked at every connection" in verdict.reason


@pytest.mark.parametrize(("address", "local"), [
    ("127.0.0.1", True), ("127.255.255.254", True), ("::1", True), ("100.64.0.1", True),
    ("::ffff:127.0.0.1", True), ("::ffff:100.64.0.1", True), ("::ffff:1.1.1.1", False),
    ("fe80::1%lo", False), ("10.1.2.3", False), ("203.0.113.1", False), ("not-an-ip", False),
])
def test_address_is_local_on_resolved_addresses(address: str, local: bool) -> None:
    assert address_is_local(address, NETWORKS) is local


def test_parsed_url_keeps_base_path_and_default_port() -> None:
    parsed = parse_backend_url("https://[::1]/api/v1/")
    assert (parsed.scheme, parsed.host, parsed.port, parsed.base_path) == (
        "https", "::1", 443, "/api/v1")
    assert parsed.origin == "https://[::1]:443"


def _spellings(real: Path, link_dir: Path) -> list[str]:
    """The egress socket `real` under other names: each reaches the very same socket."""
    (link_dir / "via-link").symlink_to(real.parent)
    (link_dir / "sock-link").symlink_to(real)
    parent = str(real.parent)
    return [f"{parent}//{real.name}", f"{parent}/./{real.name}",
            f"{parent}/../{real.parent.name}/{real.name}",
            f"/proc/self/root{real}", f"{link_dir}/via-link/{real.name}",
            f"{link_dir}/sock-link"]


def test_the_egress_socket_under_any_spelling_is_never_local(tmp_path: Path) -> None:
    real = tmp_path / "run" / "egress.sock"
    real.parent.mkdir()
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(real))
    links = tmp_path / "links"
    links.mkdir()
    try:
        for spelling in _spellings(real, links):
            verdict = backend_locality(f"unix:{spelling}", NETWORKS, LOCAL_HOSTS,
                                       egress_socket=str(real))
            assert not verdict.local, (spelling, verdict)
            assert "router.egress_socket" in verdict.reason, verdict
    finally:
        listener.close()


@pytest.mark.parametrize("spelling", [
    "/var/run/mushishi/egress.sock", "/run//mushishi/egress.sock",
    "/run/./mushishi/egress.sock", "/proc/self/root/run/mushishi/egress.sock",
])
def test_the_egress_socket_is_recognised_before_it_exists(spelling: str) -> None:
    # At `config check` before mushishi-egress.socket ever ran: paths compared resolved.
    verdict = backend_locality(f"unix:{spelling}", NETWORKS, LOCAL_HOSTS,
                               egress_socket="/run/mushishi/egress.sock")
    assert not verdict.local, (spelling, verdict)
