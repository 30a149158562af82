"""`mushishi mode [MODE] [--force]`: show the GPU mode, or switch it (through D-Bus only)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from mushishi.ctl.gpud_errors import run_command
from mushishi.shared.gpumode import GpuModeClient, GpuModeProperties


def configure(parser: argparse.ArgumentParser) -> None:
    """MODE to switch to (none: show), --force, --no-wait, --timeout, --json."""
    parser.add_argument("mode", nargs="?", help="mode to switch to; without it, show the mode")
    parser.add_argument("--force", action="store_true",
                        help="switch even when work is in flight or the mode is held (the "
                        "tenants still drain in-flight work before they stop)")
    parser.add_argument("--no-wait", action="store_true",
                        help="return once the switch has started")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="give up waiting after SECONDS (the switch goes on)")
    parser.add_argument("--json", action="store_true", help="show the state as JSON")


def render(props: GpuModeProperties) -> str:
    """The human view of gpud's properties."""
    lines = [f"mode:   {props.active_mode or 'none'} ({props.state})"]
    if props.state_reason:
        lines.append(f"reason: {props.state_reason}")
    if props.progress:
        lines.append(f"now:    {props.progress}")
    lines.append(f"modes:  {', '.join(props.modes)}")
    if props.holds:
        for hold in props.holds:
            lines.append(f"hold:   {hold.mode} by {hold.holder}"
                         + (f" ({hold.reason})" if hold.reason else ""))
    else:
        lines.append("holds:  none")
    gpu = (f"gpu:    {props.vram_used_mib}/{props.vram_total_mib} MiB used, "
           f"{props.util_percent}% busy, {props.temperature_c} °C, "
           f"{props.power_w or 0.0:.0f} W")
    if props.throttled:
        gpu += ", throttled"
    lines.append(gpu)
    return "\n".join(lines)


async def _show(args: argparse.Namespace) -> int:
    client = await GpuModeClient.connect()
    try:
        props = await client.properties()
    finally:
        client.close()
    print(json.dumps(props.to_dbus(), indent=2, sort_keys=True) if args.json
          else render(props))
    return 0


async def _switch(args: argparse.Namespace) -> int:
    client = await GpuModeClient.connect()
    terminal = sys.stdout.isatty()
    started = time.monotonic()
    try:
        await client.watch()
        await client.switch(args.mode, args.force)
        if args.no_wait:
            print(f"switching to {args.mode}")
            return 0

        def progress(text: str) -> None:
            if terminal:
                print(f"[{time.monotonic() - started:6.1f}s] {text}", flush=True)

        try:
            async with asyncio.timeout(args.timeout):
                outcome = await client.wait_switch(args.mode, progress)
        except TimeoutError:
            print(f"still switching to {args.mode} after {args.timeout:.0f} s; follow it with "
                  "`mushishi mode` or `journalctl -u mushishi-gpud -f`", file=sys.stderr)
            return 75
    finally:
        client.close()
    if outcome.ok:
        print(f"mode {args.mode} ready ({time.monotonic() - started:.1f} s)")
        return 0
    print(f"switch to {args.mode} failed: {outcome.reason}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    """Show or switch; errors name what to do."""
    return run_command("mode", _switch(args) if args.mode else _show(args))
