"""Hosts off the box, as network namespaces inside a booted sandbox.

    sandbox (the box)              offsite                         elsewhere
    198.51.100.1 ──── veth ──── 198.51.100.2            203.0.113.1 ── veth ── 203.0.113.2
                                Debian's sshd:                         another sshd, another
                                user `backup`, the copy                host key: an address
                                repository /srv/restic/mushishi       the backup must not reach

Both addresses are outside `router.local_networks`. Each sshd runs as a transient unit of the
sandbox's systemd with `NetworkNamespacePath=`, so stopping it ends every session it holds
(the host "goes away"). The files live in the sandbox's own filesystem, which stands for the
remote disk; the box reaches them only over sftp.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from devtools.sandbox import Sandbox

HOST_DIR = "/srv/offsite-hosts"


@dataclass(frozen=True)
class Host:
    """One off-box host: its namespace, addresses and sshd unit."""

    name: str
    box_address: str
    address: str

    @property
    def unit(self) -> str:
        return f"{self.name}-sshd.service"

    @property
    def host_key(self) -> str:
        return f"{HOST_DIR}/{self.name}/host_key"


OFFSITE = Host("offsite", "198.51.100.1", "198.51.100.2")
ELSEWHERE = Host("elsewhere", "203.0.113.1", "203.0.113.2")

SSHD_CONFIG = """ListenAddress {address}
HostKey {host_key}
AuthorizedKeysFile {directory}/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PidFile none
AllowUsers backup
Subsystem sftp internal-sftp
Match User backup
    ForceCommand internal-sftp
"""


class OffsiteHosts:
    """Builds the hosts in `box`; `client_key` is the box's SSH key, authorised on both."""

    def __init__(self, box: Sandbox) -> None:
        self.box = box
        self.client_key = f"{HOST_DIR}/client_key"

    def build(self, repository_dir: str) -> None:
        """Namespaces, veths, host keys, the `backup` user's key, both sshd units."""
        run = self.box.run
        run(f"mkdir -p /run/sshd {HOST_DIR} && ssh-keygen -q -t ed25519 -N '' "
            f"-C mushishi-backup -f {self.client_key}")
        # Debian's `backup` user (uid 34, shell nologin, password `*`) owns the repository.
        run(f"mkdir -p {shlex.quote(repository_dir)} && chown backup:backup "
            f"{shlex.quote(repository_dir)}")
        for index, host in enumerate((OFFSITE, ELSEWHERE)):
            directory = f"{HOST_DIR}/{host.name}"
            link = f"veth{index}"
            run(f"ip netns add {host.name} && ip -n {host.name} link set lo up && "
                f"ip link add {link} type veth peer name eth0 netns {host.name} && "
                f"ip addr add {host.box_address}/24 dev {link} && ip link set {link} up && "
                f"ip -n {host.name} addr add {host.address}/24 dev eth0 && "
                f"ip -n {host.name} link set eth0 up")
            run(f"mkdir -p {directory} && ssh-keygen -q -t ed25519 -N '' -f {host.host_key} "
                f"&& cp {self.client_key}.pub {directory}/authorized_keys")
            self.box.write(f"{directory}/sshd_config", SSHD_CONFIG.format(
                address=host.address, host_key=host.host_key, directory=directory))
            self.start(host)

    def start(self, host: Host) -> None:
        """sshd in the host's namespace (again, after `stop`)."""
        self.box.run(["systemd-run", "--collect", f"--unit={host.unit}",
                      f"--property=NetworkNamespacePath=/run/netns/{host.name}",
                      "--property=IgnoreOnIsolate=yes", "/usr/sbin/sshd", "-D", "-e", "-f",
                      f"{HOST_DIR}/{host.name}/sshd_config"])
        self.box.wait_for(host.unit, "active", timeout=30)
        self.box.run(f"for i in $(seq 100); do ssh-keyscan -T 1 {host.address} >/dev/null "
                     f"2>&1 && exit 0; sleep 0.1; done; exit 1")

    def stop(self, host: Host) -> None:
        """The host goes away: sshd and every session it serves are killed."""
        self.box.systemctl("stop", host.unit)

    def known_hosts_line(self, name: str, host: Host) -> str:
        """`name` pinned to `host`'s key, as a known_hosts line."""
        key = self.box.path(f"{host.host_key}.pub").read_text().split()
        return f"{name} {key[0]} {key[1]}\n"

    def private_key(self) -> str:
        return self.box.path(self.client_key).read_text()
