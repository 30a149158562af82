"""`mushishi firewall render|apply|confirm|rollback|verify|restore`.

The logic lives in `mushishi.firewall`; this module parses arguments, loads the config,
talks to the operator and maps outcomes to exit codes.
"""

from __future__ import annotations

import argparse
import json
import logging
import select
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from mushishi.ctl.settings import EX_CONFIG, loaded_or_report
from mushishi.firewall import host
from mushishi.firewall.apply import Firewall, FirewallError, guard_alive, lockout_facts
from mushishi.firewall.lockout import check_lockout
from mushishi.firewall.nft import Nft, NftError
from mushishi.firewall.nft_interpreter import parse_ruleset
from mushishi.firewall.render_nft import render_nft
from mushishi.firewall.render_ufw import render_ufw
from mushishi.firewall.state import APPLIED, StateDir, iso, sha256
from mushishi.firewall.table import Table, build_table
from mushishi.firewall.tenant_egress import TenantEgress, render_tenant_nft
from mushishi.firewall.verify import build_report, format_report
from mushishi.shared.config import MushishiSettings
from mushishi.shared.config.firewall import FirewallSettings
from mushishi.shared.config.loader import default_env_file
from mushishi.shared.journal import JOURNAL_SOCKET, JournalHandler

EX_OK = 0
EX_FAILED = 1
EX_USAGE = 2
EX_UNAVAILABLE = 69


def configure(parser: argparse.ArgumentParser) -> None:
    """The subcommands and their options."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", help="config file (default: "
                        "$MUSHISHI_CONFIG, else /etc/mushishi/mushishi.toml)")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    render = sub.add_parser("render", parents=[common],
                            help="print the rules rendered from [firewall]")
    render.add_argument("--format", choices=("nft", "ufw", "tenants"), default="nft",
                        help="nft: the nftables ruleset (primary); ufw: a sh script of ufw "
                        "commands plus the DOCKER-USER block for after.rules; tenants: the "
                        "Docker tenants' egress table that mushishi-tenant-network.service "
                        "loads")
    apply = sub.add_parser(
        "apply", parents=[common],
        help="load the nftables rules atomically; roll back unless confirmed in time")
    apply.add_argument("--timeout", type=int, metavar="SECONDS",
                       help="seconds to confirm before the previous rules come back "
                       "(default: [firewall].confirm_timeout_s)")
    apply.add_argument("--no-wait", action="store_true",
                       help="do not ask here; confirm with `mushishi firewall confirm` from a "
                       "NEW session (which proves you can still get in)")
    apply.add_argument("--allow-ssh-lockout", action="store_true",
                       help="apply even if the SSH lock-out guard objects (console at hand)")
    sub.add_parser("confirm", parents=[common], help="keep the rules `apply` loaded")
    sub.add_parser("rollback", parents=[common], help="put the previous rules back now")
    verify = sub.add_parser("verify", parents=[common],
                            help="evaluate the live rules: what is reachable from where")
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("restore", parents=[common],
                   help="load the last confirmed rules (mushishi-firewall.service, at boot)")


def _settings(args: argparse.Namespace) -> tuple[FirewallSettings, str] | None:
    found = _full_settings(args)
    return None if found is None else (found[0].firewall, found[1])


def _full_settings(args: argparse.Namespace) -> tuple[MushishiSettings, str] | None:
    loaded = loaded_or_report(args.config, env_file=default_env_file())
    return None if loaded is None else (loaded.settings, str(loaded.path))


def _tenant_egress(settings: MushishiSettings) -> TenantEgress | None:
    """The Docker tenants' egress rules, when a tenant runs in Docker."""
    if any(t.runtime == "docker" for t in settings.tenants.values()):
        return TenantEgress.from_settings(settings)
    return None


def _journal() -> None:
    """Record changes in the journal (the terminal gets its own messages)."""
    logger = logging.getLogger("mushishi.firewall")
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        logger.addHandler(JournalHandler("mushishi-firewall") if Path(JOURNAL_SOCKET).exists()
                          else logging.NullHandler())
    logger.propagate = False


def run(args: argparse.Namespace) -> int:
    """Dispatch; exit 0 on success, 1 when refused or failed, 78 on an invalid config."""
    _journal()
    if args.action == "restore":
        return _restore(args)
    found = _full_settings(args)
    if found is None:
        return EX_CONFIG
    everything, source = found
    settings = everything.firewall
    table = build_table(settings)
    if args.action == "render":
        if args.format == "nft":
            sys.stdout.write(render_nft(table, source=source))
        elif args.format == "tenants":
            sys.stdout.write(render_tenant_nft(TenantEgress.from_settings(everything),
                                               source=source))
        else:
            sys.stdout.write(render_ufw(table, ufw=settings.ufw,
                                        after_rules=settings.ufw_after_rules,
                                        after6_rules=settings.ufw_after6_rules,
                                        source=source,
                                        tenant_egress=_tenant_egress(everything)))
        return EX_OK
    firewall = Firewall(Nft(settings.nft), StateDir(settings.state_dir), settings.textfile_dir)
    try:
        if args.action == "apply":
            return _apply(args, settings, table, firewall, source)
        if args.action == "confirm":
            pending = firewall.confirm()
            print(f"confirmed ruleset {pending.sha256[:12]}: it stays, and "
                  "mushishi-firewall.service restores it at boot")
            return EX_OK
        if args.action == "rollback":
            firewall.rollback("rolled back by `mushishi firewall rollback`")
            print("the previous rules are back")
            return EX_OK
        return _verify(args, settings, table, firewall, source)
    except (FirewallError, NftError) as error:
        hint = " (run as root)" if "Operation not permitted" in str(error) else ""
        print(f"mushishi firewall {args.action}: {error}{hint}", file=sys.stderr)
        return EX_FAILED
    except PermissionError as error:
        print(f"mushishi firewall {args.action}: {error} (run as root)", file=sys.stderr)
        return EX_FAILED
    except OSError as error:
        print(f"mushishi firewall {args.action}: {error}", file=sys.stderr)
        return EX_FAILED


def _apply(args: argparse.Namespace, settings: FirewallSettings, table: Table,
           firewall: Firewall, source: str) -> int:
    ruleset = render_nft(table, source=source)
    facts = lockout_facts(table, host.Ip(settings.ip))
    verdict = check_lockout(table, facts)
    for warning in verdict.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if verdict.problems:
        for problem in verdict.problems:
            print(f"SSH lock-out guard: {problem}", file=sys.stderr)
        if not args.allow_ssh_lockout:
            print("nothing was changed (pass --allow-ssh-lockout only with console access)",
                  file=sys.stderr)
            return EX_FAILED
    timeout = args.timeout if args.timeout is not None else settings.confirm_timeout_s
    if timeout <= 0:
        print("--timeout must be positive", file=sys.stderr)
        return EX_USAGE
    pending = firewall.apply(ruleset, timeout)
    print(f"applied ruleset {pending.sha256[:12]} (table inet mushishi); the previous rules "
          f"come back at {iso(pending.deadline)} ({timeout} s) unless confirmed")
    if args.no_wait or not sys.stdin.isatty():
        print("confirm from a NEW SSH session (proving you can still get in):\n"
              "    mushishi firewall confirm\n"
              "or undo now: mushishi firewall rollback")
        return EX_OK
    return _ask(firewall, pending.deadline)


def _ask(firewall: Firewall, deadline: float) -> int:
    """Interactive confirmation; silence, a hang-up, Ctrl-C or anything but `yes` rolls back."""
    def hang_up(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGHUP, hang_up)
    print("Open a NEW SSH session to the box now. If it works, type 'yes' here to keep the "
          "rules: ", end="", flush=True)
    answer = ""
    try:
        remaining = deadline - time.time()
        ready, _, _ = select.select([sys.stdin], [], [], max(0.0, remaining))
        if ready:
            answer = sys.stdin.readline().strip().lower()
    except KeyboardInterrupt:
        answer = ""
    if answer == "yes":
        firewall.confirm()
        print("confirmed: the rules stay, and are restored at boot")
        return EX_OK
    reason = "not confirmed at the prompt" if answer else "no answer at the prompt"
    try:
        firewall.rollback(reason)
    except FirewallError as error:
        print(f"\n{error}", file=sys.stderr)
        return EX_FAILED
    print("\nnot confirmed: the previous rules are back")
    return EX_FAILED


def _verify(args: argparse.Namespace, settings: FirewallSettings, table: Table,
            firewall: Firewall, source: str) -> int:
    live, others = parse_ruleset(firewall.nft.ruleset_json())
    routable = [link.name for link in host.Ip(settings.ip).links() if link.master is None]
    report = build_report(table, live, others, routable, host.sockets())
    pending = firewall.state.pending()
    last = firewall.state.last()
    applied = firewall.state.read(APPLIED)
    if pending is not None and time.time() >= pending.deadline and \
            not guard_alive(pending.guard_pid, pending.token):
        report.problems.append(f"the change applied at {iso(pending.applied_at)} was never "
                               "confirmed and its guard is gone: run `mushishi firewall "
                               "rollback`")
    elif pending is not None:
        report.notes.insert(0, f"a change is waiting for confirmation until "
                            f"{iso(pending.deadline)}; it rolls back unless confirmed")
    if live is not None and applied is not None and \
            sha256(applied) != sha256(render_nft(table, source=source)):
        report.notes.insert(0, f"[firewall] in {source} changed since the last apply: run "
                            "`mushishi firewall apply`")
    if args.json:
        print(json.dumps({
            "ok": report.ok,
            "loaded": report.loaded,
            "problems": report.problems,
            "notes": report.notes,
            "last": last,
            "unlisted": report.unlisted,
            "cells": [{"service": c.service, "hook": c.hook, "interface": c.interface,
                       "expected": c.expected,
                       "live": {f: d.verdict for f, d in c.live.items()}}
                      for c in report.cells],
        }, indent=2))
    else:
        if last:
            print(f"last change: {last['action']} at {last['time']} ({last['detail']})")
        print(format_report(report, table))
    return EX_OK if report.ok else EX_FAILED


def _restore(args: argparse.Namespace) -> int:
    """Boot: load the confirmed rules even if an unrelated config key is broken."""
    code = EX_OK
    found = _settings(args)
    if found is None:
        print("mushishi firewall restore: the config is invalid; restoring with the default "
              "[firewall] paths so the box is not left open", file=sys.stderr)
        settings = FirewallSettings()
        code = EX_CONFIG
    else:
        settings = found[0]
    firewall = Firewall(Nft(settings.nft), StateDir(settings.state_dir), settings.textfile_dir)
    try:
        digest = firewall.restore()
    except FirewallError as error:
        print(f"mushishi firewall restore: {error}", file=sys.stderr)
        return EX_FAILED
    print(f"restored the confirmed ruleset {digest[:12]} (table inet mushishi)")
    return code
