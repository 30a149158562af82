"""`mushishi install`: units, D-Bus policy, user, directories and a config skeleton.

Rendering is a pure function of the settings and the directory holding the console
scripts (`plan_install`); `apply_plan` writes the result under a root directory and
touches a file only when its content changes, so running install twice changes nothing.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath

import tomlkit

from mushishi.ctl.unit_network import plan_network, read_host_files
from mushishi.services.backup.network import format_pins, resolve_hosts
from mushishi.shared.config import MushishiSettings
from mushishi.shared.config.backup import (
    PINNED_HOSTS_ENV,
    host_issues,
    local_repository_path,
    repository_host,
    repository_keys,
)
from mushishi.shared.config.gpu import mode_target, prepare_unit, tenant_unit
from mushishi.shared.config.observability import bench_results
from mushishi.shared.config.router import parse_listen
from mushishi.shared.files import replace_atomically
from mushishi.shared.locality import Resolver, backend_locality, parse_ip, system_resolver
from mushishi.shared.unit_names import ON_FAILURE

log = logging.getLogger("mushishi.install")

UNIT_DIR = PurePosixPath("etc/systemd/system")
DBUS_POLICY_DIR = PurePosixPath("etc/dbus-1/system.d")
SYSUSERS_FILE = PurePosixPath("etc/sysusers.d/mushishi.conf")
TMPFILES_FILE = PurePosixPath("etc/tmpfiles.d/mushishi.conf")
CONFIG_FILE = PurePosixPath("etc/mushishi/mushishi.toml")
CREDENTIALS_DIR = PurePosixPath("etc/mushishi/credentials")
# D-Bus policies shipped in units/ and installed under DBUS_POLICY_DIR.
DBUS_POLICIES = ("io.mushishi.GpuMode1.conf", "mushishi-noresolve.conf")

# Every long-running or oneshot unit gets these; each unit adds its own relaxations.
_HARDENING = """\
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RemoveIPC=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
CapabilityBoundingSet=
AmbientCapabilities=
UMask=0027"""


def _without(*prefixes: str) -> str:
    return "\n".join(
        line for line in _HARDENING.splitlines() if not line.startswith(prefixes)
    )


HARDENING_BLOCKS = {
    "@HARDENING@": _HARDENING,
    # GPU units: device access is granted by DeviceAllow= in the unit itself.
    "@HARDENING_NO_DEVICES@": _without("PrivateDevices="),
    # Backup units set their own narrow capability set.
    "@HARDENING_KEEP_CAPS@": _without("CapabilityBoundingSet=", "AmbientCapabilities="),
}

# Credentials each unit may load, by the config keys that name them.
def _unit_credentials(settings: MushishiSettings) -> dict[str, list[str]]:
    ntfy = [settings.ntfy.topic_credential]
    if settings.ntfy.token_credential:
        ntfy.append(settings.ntfy.token_credential)
    cloud = sorted({b.api_key_credential for b in settings.backends.values()
                    if b.api_key_credential})
    primary = [settings.backup.password_credential]
    # The copies' passwords and SSH keys: only the backup units reach the copies.
    backup = list(dict.fromkeys(primary + [
        name for copy in settings.backup.copies
        for name in (copy.password_credential, copy.ssh_key_credential) if name]))
    return {
        "mushishi-egress.service": cloud,
        # The watchdog reads the newest snapshot's age from restic itself (the copies' from
        # the backup's last.json: it never reaches off the box).
        "mushishi-watchdog.service": [*ntfy, *primary],
        "mushishi-alert@.service": ntfy,
        "mushishi-sovereignty.service": ntfy,
        "mushishi-backup.service": backup,
        "mushishi-backup-check.service": backup,
        "mushishi-bench.service": [settings.bench.api_key_credential]
        if settings.bench.api_key_credential else [],
    }


@dataclass
class Plan:
    """What install writes: files (path -> (text, mode)), symlinks and directories."""

    files: dict[PurePosixPath, tuple[str, int]] = field(default_factory=dict)
    symlinks: dict[PurePosixPath, str] = field(default_factory=dict)
    directories: dict[PurePosixPath, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def shipped_unit_names() -> list[str]:
    """Unit files shipped in the package (templates excluded)."""
    return sorted(
        entry.name for entry in resources.files("mushishi.units").iterdir()
        if entry.name.endswith((".service", ".socket", ".timer", ".target"))
    )


def _shipped(name: str) -> str:
    return resources.files("mushishi.units").joinpath(name).read_text(encoding="utf-8")


def _rendered_header(source: str = "") -> str:
    """The first line of every file install renders: where it comes from, and where to edit."""
    origin = f" from {source}" if source else ""
    return f"# Rendered by `mushishi install`{origin}; edit the config, not this file.\n"


def render_unit(text: str, bindir: str) -> str:
    """Fill the @BINDIR@, @ON_FAILURE@ and hardening placeholders of a shipped unit."""
    for placeholder, block in HARDENING_BLOCKS.items():
        text = text.replace(placeholder, block)
    return text.replace("@ON_FAILURE@", ON_FAILURE).replace("@BINDIR@", bindir)


def render_mode_target(mode: str, all_modes: list[str]) -> str:
    """mushishi-<mode>.target, conflicting with every other mode."""
    others = " ".join(mode_target(m) for m in sorted(all_modes) if m != mode)
    return (
        _shipped("mode.target.in")
        .replace("@MODE@", mode)
        .replace("@CONFLICTS@", others)
    )


def _network_allow_lines(settings: MushishiSettings) -> str:
    return "\n".join(f"IPAddressAllow={net}" for net in settings.router.local_networks)


def modes_with_prepare(settings: MushishiSettings) -> list[str]:
    """Modes whose target pulls in mushishi-gpu-prepare@<mode>: all of them. Even a mode
    without tenants needs it, as the barrier that keeps its target from becoming active
    before the old mode's tenants have drained and stopped."""
    return sorted(settings.modes)


def port_conflicts(settings: MushishiSettings) -> dict[str, list[str]]:
    """Tenant -> the other tenants serving the same port (they conflict)."""
    by_port: dict[int, list[str]] = {}
    for name, tenant in sorted(settings.tenants.items()):
        if tenant.port is not None:
            by_port.setdefault(tenant.port, []).append(name)
    return {name: [other for other in names if other != name]
            for names in by_port.values() if len(names) > 1 for name in names}


def render_tenant_dropins(settings: MushishiSettings) -> dict[PurePosixPath, str]:
    """Drop-ins of mushishi-tenant@.service that depend on the config."""
    header = _rendered_header("[modes] and [tenants]")
    template = UNIT_DIR / "mushishi-tenant@.service.d"
    prepares = " ".join(prepare_unit(mode) for mode in modes_with_prepare(settings))
    files = {
        template / "order.conf": header + (
            "# In an isolate, a tenant being stopped stops before the new mode's GPU\n"
            "# preparation runs, and a tenant being started starts after it.\n"
            "[Unit]\n" + (f"After={prepares}\n" if prepares else "")),
    }
    for tenant, config in sorted(settings.tenants.items()):
        if config.runtime in RUNTIME_DROPINS:
            files[UNIT_DIR / f"{tenant_unit(tenant)}.d" / "runtime.conf"] = (
                header.replace("[modes] and [tenants]", f"[tenants.{tenant}] runtime")
                + RUNTIME_DROPINS[config.runtime])
    for tenant, others in port_conflicts(settings).items():
        # One-way ordering between conflicting tenants: systemd orders a stop before a
        # start whichever way the edge points, and one direction cannot form a cycle.
        earlier = [other for other in others if other < tenant]
        lines = [f"Conflicts={' '.join(tenant_unit(o) for o in others)}"]
        if earlier:
            lines.append(f"After={' '.join(tenant_unit(o) for o in earlier)}")
        port = settings.tenants[tenant].port
        files[UNIT_DIR / f"{tenant_unit(tenant)}.d" / "ports.conf"] = (
            header + f"# Tenants serving port {port} conflict with each other.\n"
            "[Unit]\n" + "\n".join(lines) + "\n")
    return files


# What a container runtime needs from its tenant's unit (per-tenant runtime.conf).
RUNTIME_DROPINS = {
    "docker": """\
# Docker tenants: the egress rules of the tenants' bridge are loaded before any of their
# containers starts (dockerd itself is started by its own unit). Wants=, not Requires=:
# restarting the rules' unit (to put back a rule removed by hand) must not restart the
# tenants, and a tenant whose rules failed to load is refused by its confinement probe.
[Unit]
Wants=mushishi-tenant-network.service
After=mushishi-tenant-network.service docker.service
[Service]
# The docker CLI's own config (registry credentials), not root's home.
Environment=DOCKER_CONFIG=/etc/mushishi/docker
# Relaxation: the confinement probe enters each container's cgroup and network namespace
# (a write to the container's cgroup.procs, then setns): root, with CAP_SYS_ADMIN and
# CAP_SYS_PTRACE only, a writable cgroup tree and network namespaces. Talking to dockerd
# already makes this unit root-equivalent.
User=root
Group=root
CapabilityBoundingSet=CAP_SYS_ADMIN CAP_SYS_PTRACE
ProtectControlGroups=no
RestrictNamespaces=net
""",
    "podman": """\
# Podman tenants: `podman run --cgroups=split` keeps the container in this unit's cgroup,
# under its IPAddressDeny= and device policy (what Quadlet units do too).
[Service]
# Relaxation: rootful podman creates the container's namespaces (hostname included),
# mounts and cgroups (Delegate=yes), with system calls @system-service lacks, and runc
# grants the container the default capabilities a container gets. NoNewPrivileges= and
# RestrictSUIDSGID= stay, and the container inherits them.
User=root
Group=root
Delegate=yes
ProtectControlGroups=no
RestrictNamespaces=no
ProtectHostname=no
SystemCallFilter=
CapabilityBoundingSet=CAP_SYS_ADMIN CAP_NET_ADMIN CAP_CHOWN CAP_DAC_OVERRIDE CAP_FOWNER
CapabilityBoundingSet=CAP_FSETID CAP_KILL CAP_SETGID CAP_SETUID CAP_SETPCAP CAP_SETFCAP
CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_NET_RAW CAP_SYS_CHROOT CAP_MKNOD
CapabilityBoundingSet=CAP_AUDIT_WRITE CAP_SYS_PTRACE CAP_SYS_RESOURCE CAP_DAC_READ_SEARCH
# Netlink: podman sets up a container network's interfaces (not needed with --network=host).
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
ReadWritePaths=-/var/lib/containers -/run/containers -/run/libpod -/var/lib/cni -/run/cni
ReadWritePaths=-/etc/cni/net.d
""",
}


def plan_install(settings: MushishiSettings, bindir: str, *, root: Path,
                 config_text: str | None, resolve: Resolver = system_resolver) -> Plan:
    """Everything install writes for `settings`, with console scripts in `bindir`; `resolve`
    finds the addresses of the off-box repositories' hosts (pinned in the backup units)."""
    plan = Plan()
    units = UNIT_DIR
    for name in shipped_unit_names():
        plan.files[units / name] = (render_unit(_shipped(name), bindir), 0o644)
    modes = sorted(settings.modes)
    for mode in modes:
        plan.files[units / mode_target(mode)] = (render_mode_target(mode, modes), 0o644)
        for tenant in settings.modes[mode].tenants:
            link = units / f"{mode_target(mode)}.wants" / tenant_unit(tenant)
            plan.symlinks[link] = "../mushishi-tenant@.service"
    for mode in modes_with_prepare(settings):
        link = units / f"{mode_target(mode)}.wants" / prepare_unit(mode)
        plan.symlinks[link] = "../mushishi-gpu-prepare@.service"
    for path, text in render_tenant_dropins(settings).items():
        plan.files[path] = (text, 0o644)

    listen = ["[Socket]", "ListenStream="]
    for address in settings.router.listen:
        host, port = parse_listen(address)
        if host == "unix":
            listen.append(f"ListenStream={port}")
        else:
            listen.append(f"ListenStream={'[' + host + ']' if ':' in host else host}:{port}")
    header = _rendered_header("[router]")
    plan.files[units / "mushishi-router.socket.d" / "listen.conf"] = (
        header + "\n".join(listen) + "\n", 0o644)
    _plan_unit_network(settings, bindir, root, plan)
    plan.files[units / "mushishi-bench.service.d" / "paths.conf"] = (_bench_paths(settings),
                                                                      0o644)
    plan.files[units / "mushishi-egress.socket.d" / "listen.conf"] = (
        header + f"[Socket]\nListenStream=\nListenStream={settings.router.egress_socket}\n",
        0o644)

    plan.files[units / "mushishi-cpu-floor.service.d" / "paths.conf"] = (
        _cpu_floor_paths(settings), 0o644)
    for path, text in _network_dropins(settings).items():
        plan.files[units / path] = (text, 0o644)
    backups, warnings = _backup_network(settings, root, resolve)
    for unit in ("mushishi-backup.service", "mushishi-backup-check.service"):
        plan.files[units / f"{unit}.d" / "network.conf"] = (backups, 0o644)
    plan.warnings += warnings
    plan.warnings += [f"{issue.path}: {issue.message}" for issue in host_issues(settings, root)]
    for unit, text in _state_dropins(settings).items():
        plan.files[units / f"{unit}.d" / "state.conf"] = (text, 0o644)

    credentials_dir = root / CREDENTIALS_DIR
    missing: dict[str, list[str]] = {}
    for unit, names in _unit_credentials(settings).items():
        lines = []
        for name in names:
            source = PurePosixPath("/") / CREDENTIALS_DIR / name
            if (credentials_dir / name).is_file():
                lines.append(f"LoadCredential={name}:{source}")
            else:
                missing.setdefault(name, []).append(unit)
        if lines:
            plan.files[units / f"{unit}.d" / "credentials.conf"] = (
                "# Rendered by `mushishi install`: only the credentials this unit needs.\n"
                "[Service]\n" + "\n".join(lines) + "\n", 0o644)

    for name, units_needing in missing.items():
        plan.warnings.append(
            f"credential {name!r} (for {', '.join(units_needing)}) is missing: put it in "
            f"/{CREDENTIALS_DIR / name} (mode 0600) and run `mushishi install` again"
        )
    if bindir.startswith(("/home/", "/root/")):
        # Relaxation for development trees: the console scripts live under a home dir.
        for name in shipped_unit_names():
            if name.endswith(".service"):
                plan.files[units / f"{name}.d" / "devtree.conf"] = (
                    "# Rendered by `mushishi install`: mushishi runs from a home directory.\n"
                    "[Service]\nProtectHome=read-only\n", 0o644)

    for relative, text in _backup_dropins(settings).items():
        plan.files[units / relative] = (text, 0o644)
    if not Path(settings.backup.restic).is_file() and root == Path("/"):
        plan.warnings.append(
            f"backup.restic {settings.backup.restic} does not exist: install restic "
            f"(apt install restic) and run `mushishi install` again")

    for policy in DBUS_POLICIES:
        plan.files[DBUS_POLICY_DIR / policy] = (_shipped(policy), 0o644)
    plan.files[SYSUSERS_FILE] = (_shipped("mushishi.sysusers.conf"), 0o644)
    plan.files[TMPFILES_FILE] = (_shipped("mushishi.tmpfiles.conf")
                                 + _textfile_tmpfiles(settings) + _state_tmpfiles(settings),
                                 0o644)
    if config_text is not None:
        plan.files[CONFIG_FILE] = (config_text, 0o644)
    plan.directories[PurePosixPath("etc/mushishi")] = 0o755
    plan.directories[CREDENTIALS_DIR] = 0o700
    plan.directories[PurePosixPath("var/lib/mushishi")] = 0o755
    _plan_repository(settings, root, plan)
    return plan


def _unit_path(path: PurePosixPath) -> str:
    """A path as a unit-file word: `%` escaped, quoted when it has spaces."""
    text = str(path).replace("%", "%%")
    return f'"{text}"' if any(c.isspace() for c in text) else text


def _cpu_floor_paths(settings: MushishiSettings) -> str:
    """The floor waits for the mounts holding its model and llama-server (a model on a
    /data disk that mounts late would otherwise read as missing, a config error)."""
    floor = settings.cpu_floor
    directories = dict.fromkeys(str(PurePosixPath(p).parent)
                                for p in (floor.model, floor.llama_server))
    return (_rendered_header("[cpu_floor]") + "[Unit]\nRequiresMountsFor="
            + " ".join(_unit_path(PurePosixPath(d)) for d in directories) + "\n")


def _network_dropins(settings: MushishiSettings) -> dict[PurePosixPath, str]:
    """IPAddressDeny=any for the units that talk to the network only when their peer is
    local: the watchdog and alerts (ntfy.url); the backups are `_backup_network`'s. Only
    mushishi-egress is never confined: its job is reaching cloud APIs."""
    router = settings.router
    allow = _network_allow_lines(settings)
    ntfy = backend_locality(settings.ntfy.url, router.local_networks, router.local_hosts)
    header = _rendered_header()
    confined = "[Service]\nIPAddressDeny=any\n" + allow + "\n"
    alerts = (header + f"# ntfy.url is local ({ntfy.reason}): no other address is needed.\n"
              + confined) if ntfy.local else (
        header + f"# Relaxation: ntfy.url is not local ({ntfy.reason}),\n# so this unit "
                 "may reach it; it carries outcomes and systemd's and mushishi's own\n# records, "
                 "never a process's output (docs/alerts.md).\n# A self-hosted "
                 "ntfy on the tailnet confines it (IPAddressDeny=any).\n")
    return {
        PurePosixPath("mushishi-watchdog.service.d/network.conf"): alerts,
        PurePosixPath("mushishi-alert@.service.d/network.conf"): alerts,
        PurePosixPath("mushishi-sovereignty.service.d/network.conf"): alerts,
    }


def _plan_unit_network(settings: MushishiSettings, bindir: str, root: Path, plan: Plan) -> None:
    """Each confined unit's exact IPAddressAllow= list and its name-resolution lockdown
    (ctl/unit_network.py), from the config and the box's nsswitch.conf and resolv.conf."""
    header = _rendered_header("[router], [backends], [tenants] and /etc/resolv.conf")
    network = plan_network(settings, bindir, read_host_files(root), header)
    for relative, text in network.dropins.items():
        plan.files[UNIT_DIR / relative] = (text, 0o644)
    for path, text in network.files.items():
        plan.files[PurePosixPath(str(path).lstrip("/"))] = (text, 0o644)


def _backup_network(settings: MushishiSettings, root: Path, resolve: Resolver
                    ) -> tuple[str, list[str]]:
    """network.conf of the backup units, and warnings: IPAddressDeny=any, with
    IPAddressAllow= exactly the addresses each off-box repository's host resolves to now
    (pinned: the runner checks at each start that the host still resolves there)."""
    header = _rendered_header("[backup]")
    unpinnable = [(key, repository) for key, repository in repository_keys(settings.backup)
                  if local_repository_path(repository) is None
                  and repository_host(repository) is None]
    if unpinnable:
        key, repository = unpinnable[0]
        return (header + f"# Relaxation: {key} ({repository.split(':', 1)[0]}:) has no one "
                "host to confine\n# this unit to, so it may reach any address; restic "
                "encrypts everything before it leaves.\n# sftp:, rest: and s3: repositories "
                "are confined to their host.\n"), []
    hosts = {key: host for key, repository in repository_keys(settings.backup)
             if (host := repository_host(repository)) is not None}
    found, failed = resolve_hosts(hosts.values(), resolve)
    warnings = [f"{key}: cannot resolve {host} ({failed[host]}): the backup units may not "
                f"reach it until `mushishi install` runs again and it resolves"
                for key, host in hosts.items() if host in failed]
    lines = ["[Service]", "IPAddressDeny=any", "IPAddressAllow=localhost"]
    addresses = dict.fromkeys(a for host in hosts.values() for a in found.get(host, []))
    lines += [f"IPAddressAllow={address}" for address in addresses]
    comment = "# No off-box repository: no network at all.\n"
    if hosts:
        pins = {host: found.get(host, []) for host in hosts.values()}
        lines.append(f'Environment="{PINNED_HOSTS_ENV}={format_pins(pins)}"')
        comment = ("# restic's encrypted data may reach only these hosts, as they resolved "
                   "at install\n# (mushishi-backup refuses a repository whose host now "
                   "resolves elsewhere):\n" + "".join(
                       f"#   {key}: {host} -> {', '.join(found.get(host, [])) or 'unresolved'}"
                       "\n" for key, host in hosts.items()))
        warnings += _resolver_warnings(root, [h for h in hosts.values() if parse_ip(h) is None])
    return header + comment + "\n".join(lines) + "\n", warnings


def _resolver_warnings(root: Path, names: list[str]) -> list[str]:
    """The backup units resolve host names under IPAddressDeny=any: a nameserver that is
    not local cannot answer them."""
    try:
        text = (root / "etc/resolv.conf").read_text(encoding="utf-8")
    except OSError:
        return []
    servers = [line.split()[1] for line in text.splitlines()
               if line.startswith("nameserver") and len(line.split()) > 1]
    remote = [s for s in servers if (ip := parse_ip(s)) is not None and not ip.is_loopback]
    if not names or not remote or len(remote) < len(servers):
        return []
    return [f"the backup units resolve {', '.join(names)} under IPAddressDeny=any, and "
            f"/etc/resolv.conf names only nameservers they cannot reach ({', '.join(remote)}):"
            f" use a local resolver (systemd-resolved's 127.0.0.53) or an IP address in the "
            f"repository"]


def _plan_repository(settings: MushishiSettings, root: Path, plan: Plan) -> None:
    """Create a local repository's directory once (setgid: its files share one group), the
    primary's or a copy's on a local disk, unless its parent is missing: then the disk is
    probably not mounted, and creating it would put backups on the wrong disk."""
    for key, configured in repository_keys(settings.backup):
        repository = local_repository_path(configured)
        if not repository or (root / repository.lstrip("/")).exists():
            continue
        relative = PurePosixPath(repository.lstrip("/"))
        if (root / relative.parent).is_dir() or relative.parent in plan.directories:
            plan.directories[relative] = 0o2750
        else:
            plan.warnings.append(
                f"{key} {repository}: its parent directory does not exist (is the "
                f"disk mounted?); mushishi-backup fails until it does")


def _under_home(path: str) -> bool:
    return PurePosixPath(path).is_relative_to("/home") or PurePosixPath(path).is_relative_to(
        "/root")


def _backup_dropins(settings: MushishiSettings) -> dict[PurePosixPath, str]:
    """Paths the backup units write (repository, metrics) and may read (sets in /home)."""
    header = _rendered_header("[backup]")
    backup = settings.backup
    lines = ["[Service]"]
    repository = local_repository_path(backup.repository)
    for _, configured in repository_keys(backup):
        local = local_repository_path(configured)
        if local:
            # "-": when the repository's disk is not mounted the unit still starts, and
            # mushishi-backup fails with a message naming the path (not a 226/NAMESPACE).
            lines.append(f"ReadWritePaths=-{local}")
    lines.append(f"ReadWritePaths=-{backup.textfile_dir}")
    reads_home = [s.path for s in backup.sets if _under_home(s.path)]
    if reads_home or _under_home(backup.restic):
        # Relaxation: declared sets (or restic itself) live under /home or /root.
        lines.append("ProtectHome=read-only")
    text = header + "\n".join(lines) + "\n"
    watchdog = [f"ReadWritePaths=-{settings.watchdog.textfile_dir}"]
    if _under_home(backup.restic) or (repository and _under_home(repository)):
        watchdog.append("ProtectHome=read-only")
    watchdog_text = (_rendered_header("[watchdog] and [backup]") + "[Service]\n"
                     + "\n".join(watchdog) + "\n")
    return {
        PurePosixPath("mushishi-backup.service.d/paths.conf"): text,
        PurePosixPath("mushishi-backup-check.service.d/paths.conf"): text,
        PurePosixPath("mushishi-watchdog.service.d/paths.conf"): watchdog_text,
    }


def _bench_paths(settings: MushishiSettings) -> str:
    """Where mushishi-bench writes: its results (StateDirectory= covers the default) and
    its textfile."""
    lines = ["[Service]", f"ReadWritePaths=-{settings.bench.textfile_dir}"]
    results = PurePosixPath(bench_results(settings)).parent
    if not results.is_relative_to("/var/lib/mushishi/bench"):
        lines.append(f"ReadWritePaths=-{results}")
    return _rendered_header("[bench]") + "\n".join(lines) + "\n"


def _textfile_tmpfiles(settings: MushishiSettings) -> str:
    """node_exporter textfile directories: group mushishi and mode 2775 always, so the
    watchdog and the bench (user mushishi) can write there even when the directory already
    exists (Debian's prometheus-node-exporter creates /var/lib/prometheus/node-exporter
    root:root 0755); the owner is set only when tmpfiles creates it (the ':' prefix), and
    node_exporter (user prometheus) reads through the world-readable bits."""
    directories = dict.fromkeys([settings.backup.textfile_dir, settings.watchdog.textfile_dir,
                                 settings.bench.textfile_dir])
    lines = "".join(f"d {d} 2775 :root mushishi -\n" for d in directories)
    return ("# node_exporter textfile collector (rendered from [backup], [watchdog] and "
            "[bench]).\n" + lines)


@dataclass(frozen=True)
class StateDir:
    """A directory a unit writes that the config may move away from the unit's own
    StateDirectory=/CacheDirectory= (under ProtectSystem=strict it would be read-only)."""

    key: str  # the config key, for the comments
    path: str
    default: str
    units: tuple[str, ...]
    tmpfiles: str  # "MODE USER GROUP" of the directory when install creates it


# Directories units write that the config may move: (key, units, tmpfiles "MODE USER
# GROUP" or "" when install must not create it). Each key's default in the config models is
# the unit's own StateDirectory=/CacheDirectory=/ReadWritePaths= entry.
_MOVABLE_DIRS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("router.state_dir", ("mushishi-router.service",), "0700 mushishi mushishi"),
    ("egress.state_dir", ("mushishi-egress.service",), "0750 mushishi mushishi"),
    ("watchdog.state_dir", ("mushishi-watchdog.service", "mushishi-alert@.service",
                            "mushishi-sovereignty.service"), "0755 mushishi mushishi"),
    ("backup.state_dir", ("mushishi-backup.service", "mushishi-backup-check.service"),
     "0755 root mushishi"),
    ("backup.cache_dir", ("mushishi-backup.service", "mushishi-backup-check.service"),
     "0700 root root"),
    ("firewall.state_dir", ("mushishi-firewall.service",), "0750 root root"),
    # node_exporter's package owns this directory: never created here.
    ("firewall.textfile_dir", ("mushishi-firewall.service",), ""),
)


def state_dirs(settings: MushishiSettings) -> list[StateDir]:
    """Every configurable directory a unit writes that the config moved from its default."""
    moved = []
    for key, units, tmpfiles in _MOVABLE_DIRS:
        section_name, field = key.split(".")
        section = getattr(settings, section_name)
        path = getattr(section, field)
        default = type(section).model_fields[field].default
        if path is not None and str(path) != str(default):
            moved.append(StateDir(key, str(path), str(default), units, tmpfiles))
    return moved


def _state_dropins(settings: MushishiSettings) -> dict[str, str]:
    """ReadWritePaths= for each unit whose directories the config moved."""
    lines: dict[str, list[str]] = {}
    for moved in state_dirs(settings):
        for unit in moved.units:
            lines.setdefault(unit, []).append(
                f"# {moved.key} (the unit's default is {moved.default})\n"
                # "-" where install does not create the directory: a missing one is then
                # the daemon's error naming the key, not the unit's 226/NAMESPACE.
                f"ReadWritePaths={'' if moved.tmpfiles else '-'}"
                f"{_unit_path(PurePosixPath(moved.path))}")
    return {unit: _rendered_header() + "[Service]\n" + "\n".join(entries) + "\n"
            for unit, entries in lines.items()}


def _state_tmpfiles(settings: MushishiSettings) -> str:
    """Moved state directories are created at install (the defaults are the units'
    StateDirectory=/CacheDirectory=)."""
    lines = "".join(f"# {d.key}\nd {d.path} {d.tmpfiles} -\n"
                    for d in state_dirs(settings) if d.tmpfiles)
    return ("# Directories moved away from the units' defaults in the config.\n" + lines) \
        if lines else ""


RESTIC_CANDIDATES = ("/usr/bin/restic", "/usr/local/bin/restic", "/bin/restic",
                     "/opt/restic/restic", "/snap/bin/restic")


def find_restic(root: Path, which: Callable[[str], str | None] = shutil.which) -> str | None:
    """restic's absolute path on the target system: the usual places, then install's $PATH.

    Found once, at install time, and written into the config: units never search $PATH.
    """
    for candidate in RESTIC_CANDIDATES:
        if (root / candidate.lstrip("/")).is_file():
            return candidate
    if root == Path("/"):
        found = which("restic")
        if found:
            return str(Path(found).resolve())
    return None


def record_restic_path(config_text: str, restic: str) -> str:
    """The config with `[backup] restic = <path>`, comments and layout preserved."""
    document = tomlkit.parse(config_text)
    if "backup" not in document:
        document.add(tomlkit.nl())
        document.add("backup", tomlkit.table())
    document["backup"]["restic"] = restic  # type: ignore[index]
    return tomlkit.dumps(document)


def skeleton_config() -> str:
    """The config written when none exists."""
    return resources.files("mushishi.shared.config").joinpath("skeleton.toml").read_text(
        encoding="utf-8")


def apply_plan(plan: Plan, root: Path) -> list[str]:
    """Write the plan under `root`; return what changed (empty when already installed)."""
    changed: list[str] = []
    for relative, mode in plan.directories.items():
        path = root / relative
        if not path.is_dir():
            path.mkdir(parents=True, exist_ok=True)
            changed.append(f"created {path}/")
        if path.stat().st_mode & 0o7777 != mode:
            path.chmod(mode)
    for relative, (text, mode) in plan.files.items():
        path = root / relative
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(path, text, mode)
        changed.append(f"wrote {path}")
    for relative, target in plan.symlinks.items():
        path = root / relative
        if path.is_symlink() and str(path.readlink()) == target:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.exists():
            path.unlink()
        path.symlink_to(target)
        changed.append(f"linked {path} -> {target}")
    changed += _prune_stale_tenant_links(plan, root)
    return changed


def _prune_stale_tenant_links(plan: Plan, root: Path) -> list[str]:
    """Remove tenant and GPU-preparation links, and port and runtime drop-ins, of modes or
    tenants no longer in the config."""
    removed = []
    unit_dir = root / UNIT_DIR
    wanted = {root / p for p in plan.symlinks}
    for wants in unit_dir.glob("mushishi-*.target.wants"):
        for pattern in ("mushishi-tenant@*.service", "mushishi-gpu-prepare@*.service"):
            for link in wants.glob(pattern):
                if link not in wanted and link.is_symlink():
                    link.unlink()
                    removed.append(f"removed {link}")
    rendered = {root / p for p in plan.files}
    stale = [*unit_dir.glob("mushishi-tenant@?*.service.d/ports.conf"),
             *unit_dir.glob("mushishi-tenant@?*.service.d/runtime.conf"),
             # Until runtime.conf: group docker for every tenant whose command was docker.
             *unit_dir.glob("mushishi-tenant@.service.d/docker.conf")]
    for dropin in stale:
        if dropin not in rendered:
            dropin.unlink()
            removed.append(f"removed {dropin}")
    return removed


def activate(root: Path, *, enable: bool) -> list[str]:
    """On a live system (root=/): create the user and directories, reload systemd."""
    done: list[str] = []
    if root != Path("/"):
        return done
    for argv in (
        [_tool("systemd-sysusers"), str(Path("/") / SYSUSERS_FILE)],
        [_tool("systemd-tmpfiles"), "--create", str(Path("/") / TMPFILES_FILE)],
    ):
        subprocess.run(argv, check=True)
        done.append(" ".join(argv))
    if Path("/run/systemd/system").is_dir():
        subprocess.run([_tool("systemctl"), "daemon-reload"], check=True)
        done.append("systemctl daemon-reload")
        if enable:
            subprocess.run([_tool("systemctl"), "enable", "mushishi.target"], check=True)
            done.append("systemctl enable mushishi.target")
        reload_dbus = [_tool("busctl"), "call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
                       "org.freedesktop.DBus", "ReloadConfig"]
        if subprocess.run(reload_dbus, check=False, capture_output=True).returncode == 0:
            done.append("reloaded the D-Bus policy")
    return done


def _tool(name: str) -> str:
    """System tools at their Debian/Ubuntu paths; install runs as root with a sane PATH."""
    for directory in ("/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        candidate = Path(directory) / name
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found; mushishi install needs systemd")
    return found


def default_bindir() -> str:
    """The directory holding this installation's console scripts."""
    return str(Path(sys.executable).parent)
