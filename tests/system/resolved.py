"""The real systemd-resolved inside a sandbox, laid out as on Ubuntu: its stub on 127.0.0.53
in /etc/resolv.conf, nss-resolve in nsswitch.conf, its varlink socket and D-Bus API.

Debian's packages are unpacked into a cache by scripts/fetch-systemd-resolved.sh (`make
system-deps` runs it) and copied into the sandbox's overlay, never installed on the host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from devtools.sandbox import Sandbox

NSSWITCH = """passwd:         files systemd
group:          files systemd
shadow:         files systemd
gshadow:        files systemd
hosts:          files resolve [!UNAVAIL=return] dns
networks:       files
protocols:      db files
services:       db files
ethers:         db files
rpc:            db files
"""


def resolved_tree() -> Path:
    """The unpacked systemd-resolved and libnss-resolve of the installed systemd's version."""
    version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "systemd"],
                             capture_output=True, text=True, check=True).stdout.strip()
    cache = Path(os.environ.get("MUSHISHI_CACHE_DIR", "/var/cache/mushishi"))
    tree = cache / f"systemd-resolved-{version}"
    if not (tree / "lib/systemd/systemd-resolved").is_file():
        raise AssertionError(f"{tree} is missing: run scripts/fetch-systemd-resolved.sh "
                             "(`make system-deps` does)")
    return tree


# resolved answers NetworkDown without a routable link: one veth with a global address and a
# default route, going nowhere.
NETWORK = ("ip link add v0 type veth peer name v1 && ip link set v0 up && ip link set v1 up && "
           "ip addr add 10.255.0.1/24 dev v0 && ip route add default dev v0")


def start_resolved(box: Sandbox, *, upstream: str) -> None:
    """Copy resolved into `box`, make it the box's resolver, forwarding to `upstream`."""
    tree = resolved_tree()
    box.run(NETWORK)
    for source in sorted(tree.rglob("*")):
        if source.is_file() and "share/man" not in str(source) and "share/doc" not in str(
                source):
            target = box.path("/" + str(source.relative_to(tree)))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    box.run(["systemd-sysusers", "/usr/lib/sysusers.d/systemd-resolve.conf"])
    box.run(["rm", "-f", "/etc/systemd/system/systemd-resolved.service"])  # the sandbox's mask
    box.write("/etc/systemd/resolved.conf.d/mushishi-test.conf",
              f"[Resolve]\nDNS={upstream}\nDomains=~.\nDNSSEC=no\nDNSOverTLS=no\nLLMNR=no\n"
              "MulticastDNS=no\nCache=no\n")
    box.run(["ln", "-sfn", "/run/systemd/resolve/stub-resolv.conf", "/etc/resolv.conf"])
    box.write("/etc/nsswitch.conf", NSSWITCH)
    box.systemctl("daemon-reload")
    box.systemctl("start", "dbus.socket")
    box.run(["busctl", "call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
             "org.freedesktop.DBus", "ReloadConfig"])
    box.systemctl("start", "systemd-resolved.service")
    box.wait_for("systemd-resolved.service", "active", timeout=60)
