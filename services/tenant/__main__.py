"""mushishi-tenant: the helper behind mushishi-tenant@.service and mushishi-gpu-prepare@.service.

  guard NAME     ExecStartPre=: refuse to start a tenant that does not fit in free VRAM
  run NAME       ExecStart=: run the tenant's command, READY=1 once its health URL answers
  drain NAME     ExecStop=: wait for in-flight work, then run the stop command
  prepare MODE   mushishi-gpu-prepare@MODE: power limit and stop-list before MODE's tenants
  network        mushishi-tenant-network.service: Docker tenants' egress rules (nftables)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from functools import partial

from mushishi.shared.config import LoadedConfig
from mushishi.shared.daemon import EX_CONFIG, run_daemon
from mushishi.shared.notify import Notifier

log = logging.getLogger("mushishi.tenant")


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["guard", "run", "drain", "prepare", "network"])
    parser.add_argument("name", nargs="?", default="",
                        help="tenant name ([tenants.NAME]), or mode name for prepare; "
                        "none for network")


def _body(args: argparse.Namespace, loaded: LoadedConfig, notifier: Notifier) -> int:
    try:
        return _act(args, loaded, notifier)
    except Exception as error:
        # Whatever went wrong, the unit's status line (gpud's StateReason) says so.
        log.exception("mushishi-tenant %s %s failed", args.action, args.name)
        notifier.status(f"mushishi-tenant {args.action} {args.name} failed: {error!r}")
        return 1


def _act(args: argparse.Namespace, loaded: LoadedConfig, notifier: Notifier) -> int:
    if args.action == "network":
        from mushishi.services.tenant.network import load_tenant_egress

        return load_tenant_egress(loaded.settings, notifier, source=str(loaded.path))
    from mushishi.shared.gpu import open_probe

    settings = loaded.settings
    known = settings.modes if args.action == "prepare" else settings.tenants
    section = "modes" if args.action == "prepare" else "tenants"
    if args.name not in known:
        log.error("no [%s.%s] in %s (%s: %s)", section, args.name, loaded.path, section,
                  ", ".join(sorted(known)) or "none")
        return EX_CONFIG
    probe_factory = partial(open_probe, settings.gpu)
    if args.action == "guard":
        from mushishi.services.tenant.guard import guard

        return guard(settings, args.name, probe_factory, notifier)
    if args.action == "run":
        from mushishi.services.tenant.confinement import ConfinementSettings
        from mushishi.services.tenant.runner import run_tenant

        return asyncio.run(run_tenant(args.name, settings.tenants[args.name],
                                      ConfinementSettings.from_settings(settings), notifier))
    if args.action == "drain":
        from mushishi.services.tenant.drain import drain

        return asyncio.run(drain(settings, args.name, notifier, probe_factory))
    from mushishi.services.tenant.prepare import prepare

    return prepare(settings, args.name, probe_factory, notifier)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one mushishi-tenant action."""
    return run_daemon("tenant", "GPU tenant helper: guard, run, drain, prepare", _body, argv,
                      configure=_configure)


if __name__ == "__main__":
    sys.exit(main())
