"""Where to connect for a listen address: one rule for the CPU floor's probes, the
watchdog, `mushishi status` and `mushishi bench`."""

from __future__ import annotations

import pytest

from mushishi.shared.config.router import connect_host, connect_url, parse_listen


@pytest.mark.parametrize(("host", "connect"), [
    ("0.0.0.0", "127.0.0.1"),          # the IPv4 wildcard means this machine
    ("", "127.0.0.1"),                 # no host at all: the same
    ("::", "::1"),                     # the IPv6 wildcard: IPv6 loopback
    ("[::]", "::1"),                   # bracketed, as in [::]:4000
    ("0:0:0:0:0:0:0:0", "::1"),        # the wildcard spelled out
    ("127.0.0.1", "127.0.0.1"),
    ("::1", "::1"),
    ("[::1]", "::1"),
    ("100.64.0.7", "100.64.0.7"),      # a tailnet address is itself
    ("fd00::7", "fd00::7"),
    ("localhost", "localhost"),        # a host name is itself
])
def test_connect_host_maps_wildcards_to_loopback(host: str, connect: str) -> None:
    assert connect_host(host) == connect


@pytest.mark.parametrize(("host", "url"), [
    ("127.0.0.1", "http://127.0.0.1:8001"),
    ("0.0.0.0", "http://127.0.0.1:8001"),
    ("::", "http://[::1]:8001"),
    ("[::]", "http://[::1]:8001"),
    ("::1", "http://[::1]:8001"),
    ("100.64.0.7", "http://100.64.0.7:8001"),
    ("localhost", "http://localhost:8001"),
])
def test_connect_url_brackets_ipv6(host: str, url: str) -> None:
    assert connect_url(host, 8001) == url


@pytest.mark.parametrize(("listen", "url"), [
    ("0.0.0.0:4000", "http://127.0.0.1:4000"),
    ("[::]:4000", "http://[::1]:4000"),
    ("[::1]:4000", "http://[::1]:4000"),
    ("100.64.0.7:4000", "http://100.64.0.7:4000"),
])
def test_a_parsed_listen_address_connects_the_same_way(listen: str, url: str) -> None:
    host, port = parse_listen(listen)
    assert connect_url(host, int(port)) == url
