"""What each confined unit may reach on the network, rendered as drop-ins by `mushishi
install`: its exact `IPAddressAllow=` list, and no name resolution unless the config needs
it (docs/security.md#side-doors).

Addresses. `IPAddressAllow=localhost` would admit all of 127.0.0.0/8, which holds
systemd-resolved's stub (127.0.0.53, 127.0.0.54): a confined unit could resolve, and so send,
`t1-prompt-fragment.attacker.example` through it. Each unit now gets 127.0.0.1 and ::1,
the other loopback addresses its own config names (a listen address, a backend URL), and,
where it serves or reaches the tailnet, the non-loopback `[router] local_networks` with the
well-known resolvers (Tailscale's 100.100.100.100) and the box's nameservers cut out.

Names. No confined unit resolves a name unless `[router] local_hosts` lists some; then the
units that connect to backends by URL (the router and the bench) resolve through the box's
nameservers and nothing else. Otherwise: the BPF program pinned by mushishi-dns-filter.service drops
any packet to port 53 or 853 (`IPEgressFilterPath=`), resolved's varlink socket, nscd and
avahi are made inaccessible, nsswitch.conf says `hosts: files`, and the D-Bus policy
(units/mushishi-noresolve.conf) refuses org.freedesktop.resolve1 to the group every confined
unit carries. With `local_hosts` the router and the bench may send DNS to the box's
nameservers (read from /etc/resolv.conf at install) and nowhere else, through `hosts: files
dns`; varlink, D-Bus, nscd and avahi stay closed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from pathlib import Path, PurePosixPath

from mushishi.shared.config import MushishiSettings
from mushishi.shared.config.router import parse_listen
from mushishi.shared.locality import AddressError, parse_backend_url, parse_ip

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

LOOPBACK: tuple[IPAddress, ...] = (IPv4Address("127.0.0.1"), IPv6Address("::1"))
# Resolvers at fixed addresses: systemd-resolved's stubs and Tailscale's MagicDNS (which
# forwards any other name to the tailnet's upstream resolvers).
WELL_KNOWN_RESOLVERS: tuple[IPAddress, ...] = (
    IPv4Address("127.0.0.53"), IPv4Address("127.0.0.54"), IPv4Address("100.100.100.100"),
    IPv6Address("fd7a:115c:a1e0::53"))
_LOOPBACK_NETWORKS = (IPv4Network("127.0.0.0/8"), IPv6Network("::1/128"))
# glibc's nameserver when resolv.conf names none.
DEFAULT_NAMESERVER = IPv4Address("127.0.0.1")

BPF_DIR = PurePosixPath("/sys/fs/bpf/mushishi")
NO_DNS_PROGRAM = BPF_DIR / "no-dns"
NAMESERVERS_PROGRAM = BPF_DIR / "dns-to-nameservers"
NSSWITCH_DIR = PurePosixPath("/etc/mushishi/nsswitch")
NO_DNS_NSSWITCH = NSSWITCH_DIR / "no-dns.conf"
DNS_ONLY_NSSWITCH = NSSWITCH_DIR / "dns-only.conf"
NO_RESOLVE_GROUP = "mushishi-noresolve"
FILTER_UNIT = "mushishi-dns-filter.service"
# Resolution by something other than a DNS packet from the unit itself.
RESOLVED_SOCKETS = ("/run/systemd/resolve/io.systemd.Resolve",
                    "/run/systemd/resolve/io.systemd.Resolve.Monitor")
OTHER_RESOLVERS = ("/run/nscd", "/run/avahi-daemon")

ROUTER = "mushishi-router.service"
BENCH = "mushishi-bench.service"
# Units that connect to backends by URL: they resolve `[router] local_hosts` names.
RESOLVES_LOCAL_HOSTS = (ROUTER, BENCH)
# Units that see T1 prompts or run next to those that do: addresses and names both.
CONFINED = (ROUTER, "mushishi-cpu-floor.service", "mushishi-tenant@.service",
            "mushishi-gpu-prepare@.service", BENCH)
# Units whose allow list is exact too, but which resolve as before (gpud: root, no prompts).
ADDRESSES_ONLY = ("mushishi-router.socket", "mushishi-gpud.service")


@dataclass(frozen=True)
class HostFiles:
    """What install reads from the box: its nsswitch.conf and resolv.conf (None: absent)."""

    nsswitch: str | None
    resolv_conf: str | None


def nameservers(resolv_conf: str | None) -> list[IPAddress]:
    """The `nameserver` addresses of a resolv.conf, in order; glibc's 127.0.0.1 when none."""
    found: list[IPAddress] = []
    for line in (resolv_conf or "").splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            address = parse_ip(words[1].split("%", 1)[0])
            if address is not None and address not in found:
                found.append(address)
    return found or [DEFAULT_NAMESERVER]


def resolves_names(settings: MushishiSettings, unit: str) -> bool:
    """Whether the config says `unit` needs names resolved: the router and the bench when
    `[router] local_hosts` lists names (backend URLs may then name them)."""
    return unit in RESOLVES_LOCAL_HOSTS and bool(settings.router.local_hosts)


def without(networks: Iterable[IPNetwork], excluded: Iterable[IPAddress]) -> list[IPNetwork]:
    """`networks` with every excluded address cut out (as the fewest prefixes)."""
    result = list(networks)
    for address in excluded:
        host = ip_network(address)
        next_round: list[IPNetwork] = []
        for network in result:
            if network.version == host.version and host.subnet_of(network):  # type: ignore[arg-type]
                next_round.extend(network.address_exclude(host))  # type: ignore[arg-type]
            else:
                next_round.append(network)
        result = next_round
    return sorted(result, key=lambda n: (n.version, n.network_address, n.prefixlen))


def _host_literal(host: str) -> IPAddress | None:
    return parse_ip(host.strip("[]").split("%", 1)[0])


def _url_literal(url: str | None) -> IPAddress | None:
    if not url:
        return None
    try:
        return parse_backend_url(url).ip
    except AddressError:
        return None


def _named_addresses(settings: MushishiSettings, unit: str) -> list[IPAddress | None]:
    """The IP literals the config names for `unit` to serve on or connect to."""
    backends = [_url_literal(b.url) for b in settings.backends.values()]
    tenants = [_url_literal(url) for t in settings.tenants.values()
               for url in (t.health_url, t.busy_probe.url)]
    if unit in (ROUTER, "mushishi-router.socket"):
        listen = [parse_listen(a) for a in settings.router.listen]
        return [_host_literal(h) for h, _ in listen if h != "unix"] + backends
    if unit == "mushishi-cpu-floor.service":
        return [_host_literal(settings.cpu_floor.host)]
    if unit == "mushishi-tenant@.service":
        return tenants
    if unit == BENCH:
        return backends
    if unit == "mushishi-gpud.service":
        return [_url_literal(t.busy_probe.url) for t in settings.tenants.values()]
    return []


def _is_loopback(network: IPNetwork) -> bool:
    return any(network.version == loopback.version
               and network.subnet_of(loopback)  # type: ignore[arg-type]
               for loopback in _LOOPBACK_NETWORKS)


# Units clients or peers reach over the tailnet (or another local network).
_REACHES_LOCAL_NETWORKS = (ROUTER, "mushishi-router.socket", "mushishi-tenant@.service",
                           BENCH, "mushishi-gpud.service")


def reaches_local_networks(settings: MushishiSettings, unit: str) -> bool:
    """Whether `unit` serves or reaches addresses beyond loopback: the CPU floor only when
    `cpu_floor.host` is not a loopback address (a tailnet address, 0.0.0.0)."""
    if unit == "mushishi-cpu-floor.service":
        host = _host_literal(settings.cpu_floor.host)
        return host is None or not host.is_loopback
    return unit in _REACHES_LOCAL_NETWORKS


def allowed(settings: MushishiSettings, unit: str, host: HostFiles) -> list[str]:
    """`unit`'s IPAddressAllow= entries, in order."""
    servers = nameservers(host.resolv_conf)
    entries: list[IPAddress | IPNetwork] = list(LOOPBACK)
    for address in _named_addresses(settings, unit):
        if address is not None and address.is_loopback and not address.is_unspecified \
                and address not in entries and address not in WELL_KNOWN_RESOLVERS:
            entries.append(address)
    if reaches_local_networks(settings, unit):
        wider = [n for n in settings.router.local_networks if not _is_loopback(n)]
        entries += without(wider, [*WELL_KNOWN_RESOLVERS, *servers])
    if resolves_names(settings, unit):
        entries += [s for s in servers if s not in entries]
    return [str(e) for e in entries]


def render_addresses(settings: MushishiSettings, unit: str, host: HostFiles,
                     header: str) -> str:
    """The [Service] (or [Socket]) drop-in with `unit`'s exact allow list."""
    section = "[Socket]" if unit.endswith(".socket") else "[Service]"
    why = ("# Exactly what this unit needs: 127.0.0.1, ::1, the loopback addresses its config "
           "names" + (", the\n# non-loopback [router] local_networks without the box's "
                      "resolvers" if reaches_local_networks(settings, unit) else "")
           + (", and the nameservers that resolve [router] local_hosts"
              if resolves_names(settings, unit) else "")
           + ".\n# Never all of 127.0.0.0/8: it holds systemd-resolved's stub (127.0.0.53).\n")
    lines = ["IPAddressDeny=any", "IPAddressAllow="]
    lines += [f"IPAddressAllow={entry}" for entry in allowed(settings, unit, host)]
    return header + why + section + "\n" + "\n".join(lines) + "\n"


def render_resolution(settings: MushishiSettings, unit: str, header: str) -> str:
    """The drop-in that closes every way `unit` could resolve a name it does not need."""
    names = resolves_names(settings, unit)
    closed = (*RESOLVED_SOCKETS, *OTHER_RESOLVERS) if names else (
        "/run/systemd/resolve", *OTHER_RESOLVERS)
    program = NAMESERVERS_PROGRAM if names else NO_DNS_PROGRAM
    nsswitch = DNS_ONLY_NSSWITCH if names else NO_DNS_NSSWITCH
    why = ("# [router] local_hosts: backend URLs may name hosts, so DNS may reach the box's\n"
           "# nameservers (`hosts: files dns`) and nothing else;\n"
           "# resolved's varlink and D-Bus APIs, nscd and avahi stay closed.\n") if names else (
        "# This unit resolves no names: no DNS packet leaves it (a BPF program), resolved's\n"
        "# varlink socket and stub resolv.conf, nscd and avahi are out of reach, nsswitch\n"
        "# says `hosts: files`, and the D-Bus policy refuses org.freedesktop.resolve1 to\n"
        f"# group {NO_RESOLVE_GROUP}.\n")
    return (header + why + f"[Unit]\nWants={FILTER_UNIT}\nAfter={FILTER_UNIT}\n\n[Service]\n"
            f"IPEgressFilterPath={program}\n"
            + "".join(f"InaccessiblePaths=-{path}\n" for path in closed)
            + f"BindReadOnlyPaths={nsswitch}:/etc/nsswitch.conf\n"
            f"SupplementaryGroups={NO_RESOLVE_GROUP}\n")


def render_filter(settings: MushishiSettings, bindir: str, host: HostFiles,
                  header: str) -> str:
    """mushishi-dns-filter.service's programs: no DNS, and DNS to the nameservers when the
    router needs names."""
    lines = [f"ExecStart={bindir}/mushishi-dns-filter {NO_DNS_PROGRAM}"]
    if resolves_names(settings, ROUTER):
        servers = " ".join(f"--nameserver {s}" for s in nameservers(host.resolv_conf))
        lines.append(f"ExecStart={bindir}/mushishi-dns-filter {NAMESERVERS_PROGRAM} {servers}")
    return header + "[Service]\nExecStart=\n" + "\n".join(lines) + "\n"


_DEFAULT_NSSWITCH = "passwd: files\ngroup: files\nshadow: files\ngshadow: files\nhosts: files\n"


def render_nsswitch(box: str | None, hosts: Sequence[str]) -> str:
    """The box's nsswitch.conf with its `hosts:` line replaced (every other database as the
    box has it: users and groups still resolve)."""
    line = "hosts: " + " ".join(hosts)
    text = box if box is not None else _DEFAULT_NSSWITCH
    out, seen = [], False
    for existing in text.splitlines():
        if existing.split(":", 1)[0].strip() == "hosts" and ":" in existing:
            out.append(line)
            seen = True
        else:
            out.append(existing)
    if not seen:
        out.append(line)
    return ("# Rendered by `mushishi install` from /etc/nsswitch.conf for the confined units "
            "(docs/security.md).\n" + "\n".join(out) + "\n")


@dataclass
class NetworkFiles:
    """What install writes for this: unit drop-ins (by path under the unit directory) and
    other files (by absolute path)."""

    dropins: dict[PurePosixPath, str] = field(default_factory=dict)
    files: dict[PurePosixPath, str] = field(default_factory=dict)


def plan_network(settings: MushishiSettings, bindir: str, host: HostFiles,
                 header: str) -> NetworkFiles:
    """Every drop-in and file this module renders for `settings` on a box with `host`."""
    planned = NetworkFiles()
    for unit in CONFINED + ADDRESSES_ONLY:
        name = "addresses.conf" if unit.endswith(".socket") else "local-networks.conf"
        planned.dropins[PurePosixPath(f"{unit}.d") / name] = render_addresses(
            settings, unit, host, header)
    for unit in CONFINED:
        planned.dropins[PurePosixPath(f"{unit}.d") / "names.conf"] = render_resolution(
            settings, unit, header)
    planned.dropins[PurePosixPath(f"{FILTER_UNIT}.d") / "programs.conf"] = render_filter(
        settings, bindir, host, header)
    planned.files[NO_DNS_NSSWITCH] = render_nsswitch(host.nsswitch, ["files"])
    if resolves_names(settings, ROUTER):
        planned.files[DNS_ONLY_NSSWITCH] = render_nsswitch(host.nsswitch, ["files", "dns"])
    return planned


def read_host_files(root: Path) -> HostFiles:
    """The box's nsswitch.conf and resolv.conf under `root`, following a symlink (Ubuntu's
    resolv.conf points into /run/systemd/resolve) inside `root`."""

    def read(relative: str) -> str | None:
        path = root / relative
        try:
            if path.is_symlink():
                target = path.readlink()
                path = root / str(target).lstrip("/") if target.is_absolute() \
                    else path.parent / target
            return path.read_text(encoding="utf-8")
        except OSError:
            return None

    return HostFiles(read("etc/nsswitch.conf"), read("etc/resolv.conf"))
