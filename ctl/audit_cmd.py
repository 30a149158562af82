"""`mushishi audit [--since DURATION|--from TIME] [--profile P] [--json]`: what left the box.

Reads the egress's audit (services/egress/audit.py) read-only from `egress.state_dir`,
while mushishi-egress runs or not, as root or a member of group mushishi: one row per
request the egress handled (served, refused or failed, never any text) and a per-profile
summary, or JSON lines with `--json`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo

from mushishi.ctl.settings import EX_CONFIG, loaded_or_report
from mushishi.services.egress.audit import (
    AuditEntry,
    human_bytes,
    summarize,
    summary_line,
)
from mushishi.services.egress.ledger import AuditUnavailable, read_audit

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(w|d|h|m|s)")
_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
DURATION_FORMS = ("a number and a unit, s, m, h, d or w, or several (90m, 12h, 7d, 2w, "
                  "1d12h)")
TIME_FORMS = ("YYYY-MM-DD, or YYYY-MM-DDTHH:MM[:SS] (a space for T is fine), with an "
              "optional Z or +HH:MM; without one it is local time")


def parse_duration(text: str) -> timedelta:
    """'90m', '12h', '7d', '2w', '1d12h' -> a timedelta; ValueError names the accepted
    forms."""
    compact = text.strip().lower()
    parts = _DURATION_PART.findall(compact)
    if not compact or "".join(number + unit for number, unit in parts) != compact:
        raise ValueError(f"--since {text!r} is not a duration: use {DURATION_FORMS}")
    seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    if seconds <= 0:
        raise ValueError(f"--since {text!r} is not a duration: it must be more than 0")
    return timedelta(seconds=seconds)


def parse_time(text: str, local: tzinfo | None = None) -> datetime:
    """An ISO 8601 date or time for --from; naive ones are in `local` (the system's time
    zone when None). ValueError names the accepted forms."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--from {text!r} is not a time: use {TIME_FORMS}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=local) if local is not None else when.astimezone()
    return when


def start_of(args: argparse.Namespace, now: datetime, local: tzinfo | None = None
             ) -> datetime | None:
    """Where the window begins: now - --since, or --from; None (everything kept) without
    either."""
    if args.since is not None:
        return now - parse_duration(args.since)
    if args.start is not None:
        return parse_time(args.start, local)
    return None


def configure(parser: argparse.ArgumentParser) -> None:
    """--since | --from, --profile, --json, --config."""
    window = parser.add_mutually_exclusive_group()
    window.add_argument("--since", metavar="DURATION",
                        help="only the last DURATION (90m, 12h, 7d, 2w; default: every row "
                        "kept, egress.audit_retention_days)")
    window.add_argument("--from", dest="start", metavar="TIME",
                        help="only from TIME on (2026-11-28, 2026-11-28T09:00, local time "
                        "unless it has an offset)")
    parser.add_argument("--profile", "-p", metavar="P", help="only requests of profile P")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per request (JSON lines), no summary")
    parser.add_argument("--config", metavar="PATH", help="config file (to find "
                        "egress.state_dir and the profiles)")


def _table(entries: list[AuditEntry], when: Callable[[datetime], str]) -> list[str]:
    header = ("TIME", "PROFILE", "TIER", "BACKEND", "MODEL", "ENDPOINT", "OUTCOME", "OUT",
              "IN", "TOKENS", "REQUEST")
    rows = [header]
    for entry in entries:
        finish = entry.finish
        assert finish is not None
        outcome = finish.outcome + (f" ({finish.reason})" if finish.reason else "")
        rows.append((when(entry.time), entry.profile, entry.tier, entry.backend,
                     entry.model or "-", entry.endpoint, outcome, human_bytes(finish.bytes_out),
                     human_bytes(finish.bytes_in), f"{entry.tokens:,}", entry.request_id))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            .rstrip() for row in rows]


def render(entries: list[AuditEntry], profiles: dict[str, str], since: datetime | None,
           local: tzinfo | None = None) -> str:
    """The human view: a row per finished request, then one summary line per profile."""
    def when(moment: datetime) -> str:
        shown = moment.astimezone(local) if local is not None else moment.astimezone()
        return shown.strftime("%Y-%m-%d %H:%M:%S")

    finished = [e for e in entries if e.finish is not None]
    lines = [f"requests handled by mushishi-egress since {when(since)}" if since is not None
             else "requests handled by mushishi-egress (every row kept)"]
    lines += _table(finished, when) if finished else ["(none)"]
    lines.append("")
    lines.append("what left the box, per profile:")
    lines += ["  " + summary_line(summary) for summary in summarize(entries, profiles)]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the audit: 0, 2 for bad options, 1 when the audit cannot be read, 78 for a
    config that cannot be loaded."""
    try:
        since = start_of(args, datetime.now(UTC))
    except ValueError as error:
        print(f"mushishi audit: {error}", file=sys.stderr)
        return 2
    loaded = loaded_or_report(args.config)
    if loaded is None:
        return EX_CONFIG
    settings, path = loaded.settings, loaded.path
    profiles = {name: profile.tier for name, profile in settings.profiles.items()}
    try:
        entries = read_audit(settings.egress.state_dir, since=since, profile=args.profile)
    except (FileNotFoundError, AuditUnavailable) as error:
        print(f"mushishi audit: {error}", file=sys.stderr)
        return 1
    if args.profile is not None:
        if args.profile not in profiles and not entries:
            known = ", ".join(profiles) or "none configured"
            print(f"mushishi audit: no profile {args.profile!r} in {path} and no request of "
                  f"it in the audit (profiles: {known})", file=sys.stderr)
            return 2
        profiles = {args.profile: profiles[args.profile]} if args.profile in profiles else {}
    if args.json:
        for entry in entries:
            if entry.finish is not None:
                print(json.dumps(entry.as_json(), ensure_ascii=False))
        return 0
    print(render(entries, profiles, since))
    return 0
