"""What each confined unit may reach: exact IPAddressAllow= lists and the name-resolution
lockdown, rendered from the config and the box's nsswitch.conf and resolv.conf."""

from __future__ import annotations

from ipaddress import IPv4Address, ip_address, ip_network
from pathlib import Path

import pytest

from mushishi.ctl.unit_network import (
    CONFINED,
    DNS_ONLY_NSSWITCH,
    NAMESERVERS_PROGRAM,
    NO_DNS_NSSWITCH,
    NO_DNS_PROGRAM,
    HostFiles,
    allowed,
    nameservers,
    plan_network,
    read_host_files,
    render_filter,
    render_nsswitch,
    render_resolution,
    without,
)
from mushishi.shared.config import load_settings
from tests.unit.ctl.allow_lists import admits

UBUNTU = HostFiles(
    nsswitch="passwd: files systemd\ngroup: files systemd\nhosts: files mdns4_minimal "
             "[NOTFOUND=return] resolve [!UNAVAIL=return] dns myhostname\nnetworks: files\n",
    resolv_conf="# stub\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n")
BASE = """
[router]
listen = ["127.0.0.1:4000", "127.0.0.9:4001", "unix:/run/mushishi/router.sock"]
local_networks = ["127.0.0.0/8", "::1/128", "100.64.0.0/10"]
{router_extra}
[backends.gpu]
url = "{gpu_url}"
model = "m"
[backends.cpu]
url = "http://127.0.0.1:8001/v1"
model = "c"
[profiles.private]
tier = "T1"
chain = ["gpu", "cpu"]
"""


def settings(tmp_path: Path, *, local_hosts: bool = False, gpu_url: str =
             "http://127.0.0.2:8000/v1"):
    path = tmp_path / "mushishi.toml"
    extra = 'local_hosts = ["localhost"]' if local_hosts else ""
    path.write_text(BASE.format(router_extra=extra, gpu_url=gpu_url))
    return load_settings(path)


@pytest.mark.parametrize(("text", "expected"), [
    ("nameserver 127.0.0.53\noptions edns0\n", ["127.0.0.53"]),
    ("nameserver 192.168.1.1\nnameserver fe80::1%eth0\nnameserver 192.168.1.1\n",
     ["192.168.1.1", "fe80::1"]),
    ("# nothing\nsearch example\n", ["127.0.0.1"]),  # glibc's default
    (None, ["127.0.0.1"]),
    ("nameserver not-an-address\n", ["127.0.0.1"]),
])
def test_nameservers_are_read_as_glibc_would(text: str | None, expected: list[str]) -> None:
    assert [str(a) for a in nameservers(text)] == expected


def test_cutting_an_address_out_keeps_everything_else() -> None:
    tailnet = ip_network("100.64.0.0/10")
    parts = without([tailnet], [IPv4Address("100.100.100.100"), IPv4Address("8.8.8.8")])
    assert sum(p.num_addresses for p in parts) == tailnet.num_addresses - 1
    assert not any(ip_address("100.100.100.100") in p for p in parts)
    assert all(p.subnet_of(tailnet) for p in parts)  # type: ignore[arg-type]
    assert without([tailnet], []) == [tailnet]


def test_the_router_gets_loopback_its_named_addresses_and_the_tailnet_never_127_8(
        tmp_path: Path) -> None:
    entries = allowed(settings(tmp_path), "mushishi-router.service", UBUNTU)
    assert entries[:4] == ["127.0.0.1", "::1", "127.0.0.9", "127.0.0.2"]
    text = "\n".join(f"IPAddressAllow={e}" for e in entries)
    for address in ("100.64.0.1", "100.100.100.99", "100.127.255.254"):
        assert admits(text, address), address
    for address in ("127.0.0.53", "127.0.0.54", "127.0.0.3", "100.100.100.100", "10.0.0.1"):
        assert not admits(text, address), address


@pytest.mark.parametrize(("unit", "expected"), [
    ("mushishi-cpu-floor.service", ["127.0.0.1", "::1"]),
    ("mushishi-gpu-prepare@.service", ["127.0.0.1", "::1"]),
])
def test_units_that_serve_only_loopback_get_only_loopback(tmp_path: Path, unit: str,
                                                          expected: list[str]) -> None:
    assert allowed(settings(tmp_path), unit, UBUNTU) == expected


def test_a_nameserver_on_the_tailnet_is_cut_out_of_it(tmp_path: Path) -> None:
    host = HostFiles(None, "nameserver 100.64.0.53\n")
    text = "\n".join(f"IPAddressAllow={e}" for e in
                     allowed(settings(tmp_path), "mushishi-tenant@.service", host))
    assert not admits(text, "100.64.0.53") and admits(text, "100.64.0.52")


def test_local_hosts_lets_the_router_and_the_bench_reach_the_nameservers_only(
        tmp_path: Path) -> None:
    config = settings(tmp_path, local_hosts=True)
    for unit in ("mushishi-router.service", "mushishi-bench.service"):
        assert allowed(config, unit, UBUNTU)[-1] == "127.0.0.53", unit
        dropin = render_resolution(config, unit, "")
        assert f"IPEgressFilterPath={NAMESERVERS_PROGRAM}\n" in dropin
        assert f"BindReadOnlyPaths={DNS_ONLY_NSSWITCH}:/etc/nsswitch.conf\n" in dropin
        assert "InaccessiblePaths=-/run/systemd/resolve/io.systemd.Resolve\n" in dropin
        assert "InaccessiblePaths=-/run/systemd/resolve\n" not in dropin  # resolv.conf stays
    for unit in ("mushishi-cpu-floor.service", "mushishi-tenant@.service",
                 "mushishi-gpu-prepare@.service"):
        assert "127.0.0.53" not in allowed(config, unit, UBUNTU), unit
        assert f"IPEgressFilterPath={NO_DNS_PROGRAM}\n" in render_resolution(config, unit, "")
    filter_dropin = render_filter(config, "/opt/bin", UBUNTU, "")
    assert filter_dropin.splitlines()[-2:] == [
        f"ExecStart=/opt/bin/mushishi-dns-filter {NO_DNS_PROGRAM}",
        f"ExecStart=/opt/bin/mushishi-dns-filter {NAMESERVERS_PROGRAM} "
        "--nameserver 127.0.0.53"]


@pytest.mark.parametrize("unit", CONFINED)
def test_by_default_every_confined_unit_is_closed_to_every_resolver(tmp_path: Path,
                                                                    unit: str) -> None:
    config = settings(tmp_path)
    dropin = render_resolution(config, unit, "")
    assert "Wants=mushishi-dns-filter.service\nAfter=mushishi-dns-filter.service\n" in dropin
    assert f"IPEgressFilterPath={NO_DNS_PROGRAM}\n" in dropin
    for path in ("/run/systemd/resolve", "/run/nscd", "/run/avahi-daemon"):
        assert f"InaccessiblePaths=-{path}\n" in dropin
    assert f"BindReadOnlyPaths={NO_DNS_NSSWITCH}:/etc/nsswitch.conf\n" in dropin
    assert "SupplementaryGroups=mushishi-noresolve\n" in dropin
    assert "127.0.0.53" not in allowed(config, unit, UBUNTU)
    assert render_filter(config, "/opt/bin", UBUNTU, "").splitlines()[-1] == (
        f"ExecStart=/opt/bin/mushishi-dns-filter {NO_DNS_PROGRAM}")


def test_nsswitch_keeps_every_database_but_hosts() -> None:
    text = render_nsswitch(UBUNTU.nsswitch, ["files"])
    assert "passwd: files systemd\ngroup: files systemd\nhosts: files\nnetworks: files\n" \
        in text
    assert "resolve" not in text and "mdns" not in text and "myhostname" not in text
    assert render_nsswitch("passwd: files\n", ["files", "dns"]).endswith(
        "passwd: files\nhosts: files dns\n")
    assert "hosts: files\n" in render_nsswitch(None, ["files"])


def test_plan_renders_the_dropins_and_the_nsswitch_files(tmp_path: Path) -> None:
    planned = plan_network(settings(tmp_path), "/opt/bin", UBUNTU, "# header\n")
    assert set(planned.files) == {NO_DNS_NSSWITCH}
    names = {str(p) for p in planned.dropins}
    for unit in CONFINED:
        assert f"{unit}.d/names.conf" in names and f"{unit}.d/local-networks.conf" in names
    assert "mushishi-router.socket.d/addresses.conf" in names
    assert "mushishi-gpud.service.d/local-networks.conf" in names
    assert "mushishi-gpud.service.d/names.conf" not in names
    with_names = plan_network(settings(tmp_path, local_hosts=True), "/opt/bin", UBUNTU, "")
    assert set(with_names.files) == {NO_DNS_NSSWITCH, DNS_ONLY_NSSWITCH}


def test_host_files_follow_resolv_conf_into_the_root(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "run/systemd/resolve").mkdir(parents=True)
    (tmp_path / "run/systemd/resolve/stub-resolv.conf").write_text("nameserver 127.0.0.53\n")
    (tmp_path / "etc/resolv.conf").symlink_to("/run/systemd/resolve/stub-resolv.conf")
    (tmp_path / "etc/nsswitch.conf").write_text("hosts: files dns\n")
    host = read_host_files(tmp_path)
    assert host == HostFiles("hosts: files dns\n", "nameserver 127.0.0.53\n")
    assert read_host_files(tmp_path / "missing") == HostFiles(None, None)


def test_a_cpu_floor_serving_the_tailnet_gets_the_tailnet(tmp_path: Path) -> None:
    path = tmp_path / "floor.toml"
    path.write_text(BASE.format(router_extra="", gpu_url="http://127.0.0.2:8000/v1")
                    + '[cpu_floor]\nhost = "100.64.1.2"\n')
    text = "\n".join(f"IPAddressAllow={e}" for e in
                     allowed(load_settings(path), "mushishi-cpu-floor.service", UBUNTU))
    assert admits(text, "100.64.1.2") and admits(text, "100.70.0.1")
    assert not admits(text, "127.0.0.53") and not admits(text, "100.100.100.100")
