"""mushishi-dns-filter: load the BPF program that keeps confined units from querying DNS,
check its verdicts on test packets, and pin it where their `IPEgressFilterPath=` points
(mushishi-dns-filter.service, rendered by `mushishi install`; docs/security.md#side-doors).

`mushishi-dns-filter PIN [--nameserver ADDRESS]…`: without nameservers the program drops
every DNS query; with them, it lets DNS reach exactly those addresses.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from ipaddress import ip_address
from pathlib import Path

from mushishi.services.dns_filter import bpf
from mushishi.services.dns_filter.program import dns_filter, expected_verdicts
from mushishi.shared.journal import setup_logging
from mushishi.shared.notify import Notifier

log = logging.getLogger("mushishi.dns_filter")


def load_check_and_pin(pin: Path, nameservers: Sequence[str]) -> str:
    """Pin the program at `pin`; a one-line summary. Raises OSError naming what failed."""
    if bpf.bpffs_mount(pin.parent) is None:
        raise OSError(f"{pin.parent} is not on a BPF filesystem: mount one there "
                      "(`mount -t bpf bpf /sys/fs/bpf`, which systemd does at boot)")
    servers = [ip_address(address) for address in nameservers]
    fd = bpf.load_cgroup_skb(dns_filter(servers), "mushishi_dns")
    try:
        wrong = [f"{what}: {verdict}, expected {expected}"
                 for what, packet, expected in expected_verdicts(servers)
                 if (verdict := bpf.run_on_packet(fd, packet)) != expected]
        if wrong:
            raise OSError("the loaded program gives wrong verdicts, not pinned: "
                          + "; ".join(wrong))
        bpf.pin(fd, pin)
    finally:
        os.close(fd)
    allowed = f"DNS only to {', '.join(nameservers)}" if nameservers else "no DNS at all"
    return f"pinned {pin}: {allowed}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run mushishi-dns-filter."""
    parser = argparse.ArgumentParser(prog="mushishi-dns-filter", description=__doc__)
    parser.add_argument("pin", type=Path, help="where to pin the program (on a BPF "
                        "filesystem, e.g. /sys/fs/bpf/mushishi/no-dns)")
    parser.add_argument("--nameserver", action="append", default=[],
                        help="an address DNS may still reach (repeatable)")
    args = parser.parse_args(argv)
    setup_logging("mushishi-dns-filter")
    notifier = Notifier()
    try:
        summary = load_check_and_pin(args.pin, args.nameserver)
    except (OSError, ValueError) as error:
        log.error("DNS filter not pinned at %s: %s", str(args.pin), str(error))
        notifier.status(f"not pinned: {error}")
        notifier.barrier()
        return 1
    log.info("%s", summary)
    notifier.status(summary)
    notifier.barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main())
