"""`mushishi route --profile P`: which backend would answer a profile now, and why.

It asks the running router (GET /status on its unix socket), so the answer reflects live
health probes, the GPU mode gpud reports, and concurrency: the same view requests get.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from mushishi.shared.config import ConfigError, load_settings, resolve_config_path
from mushishi.shared.config.router import unix_listen_path
from mushishi.shared.readings import within
from mushishi.shared.router_status import DEFAULT_SOCKET, RouterStatus, read_status

TIMEOUT_S = 5.0


def configure(parser: argparse.ArgumentParser) -> None:
    """--profile, --socket, --config, --json."""
    parser.add_argument("--profile", "-p", help="profile to explain (default: every profile)")
    parser.add_argument("--socket", help="router unix socket (default: the unix: address in "
                        f"[router] listen, else {DEFAULT_SOCKET})")
    parser.add_argument("--config", help="config file, to find the router's socket")
    parser.add_argument("--json", action="store_true", help="print the profile's JSON")


def _socket_path(args: argparse.Namespace) -> str:
    if args.socket:
        return str(args.socket)
    try:
        settings = load_settings(resolve_config_path(args.config))
    except ConfigError:
        return DEFAULT_SOCKET
    return unix_listen_path(settings.router.listen) or DEFAULT_SOCKET


def _mark(value: bool | None) -> str:
    return "✓" if value else ("?" if value is None else "✗")


def render(status: RouterStatus, profile: str) -> str:
    """The explanation of one profile, as printed."""
    entry = status.profiles[profile]
    lines = [f"{profile} ({entry.tier}): " + (
        f"{entry.would_use} would answer" if entry.would_use else "no backend would "
        "answer now")]
    lines.append(f"  why: {entry.reason}")
    for name in entry.chain:
        backend = status.backends[name]
        where = "local" if backend.local else "cloud via mushishi-egress"
        load = f", {backend.in_flight} in flight"
        if backend.max_concurrency:
            load += f" of {backend.max_concurrency}"
        lines.append(f"  {name:<12} {backend.state:<13} {where}{load} — {backend.reason}")
    gpu = status.gpu
    lines.append("  gpu mode: " + (f"{gpu.active_mode} ({gpu.state})" if gpu.present
                                   else "unknown (mushishi-gpud is not on the bus)"))
    sovereignty = status.sovereignty
    lines.append("  sovereignty: " + ", ".join(
        f"{layer} {_mark(value)}" for layer, value in sovereignty.layers().items()))
    if sovereignty.tenants is not True:
        lines.append(f"  tenants: {sovereignty.tenants_detail}")
    share = status.cloud_share.get(profile)
    if share and entry.tier in ("T2", "T3"):
        lines.append(f"  cloud share: {share.hour:.0%} last hour, {share.day:.0%} last "
                     f"day ({share.requests_day} requests)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the explanation; 0 if a backend would answer, 1 if none would, 69 if no router."""
    path = _socket_path(args)
    reading = asyncio.run(within(TIMEOUT_S, read_status(path),
                                 "hung? `systemctl status mushishi-router`"))
    if reading.status != "ok":
        print(f"mushishi route: {reading.detail}", file=sys.stderr)
        return 69
    status = reading.value()
    profiles = [args.profile] if args.profile else sorted(status.profiles)
    unknown = [p for p in profiles if p not in status.profiles]
    if unknown:
        print(f"mushishi route: unknown profile {unknown[0]!r} (profiles: "
              f"{', '.join(sorted(status.profiles))})", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({p: status.profiles[p].to_json() for p in profiles}, indent=2,
                         ensure_ascii=False))
    else:
        print("\n\n".join(render(status, p) for p in profiles))
    return 0 if all(status.profiles[p].would_use for p in profiles) else 1
