"""`mushishi hold MODE [--then MODE] -- CMD…`: run a job holding a GPU mode.

The mode is switched to first if needed; the hold lasts while the job runs (and ends by
itself if this command dies, since it is tied to its bus connection); `--then` switches to
the next mode once the job has exited: the forensic → creative handoff in one command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import signal
import sys

from mushishi.ctl.gpud_errors import run_command
from mushishi.shared import dbus_names
from mushishi.shared.bus import BusError
from mushishi.shared.gpumode import GpuModeClient

USAGE = "mushishi hold MODE [--then MODE] [--reason TEXT] -- COMMAND [ARG…]"


def _options() -> argparse.ArgumentParser:
    # What comes before `--`; everything after it is the job's own argv, untouched.
    parser = argparse.ArgumentParser(prog="mushishi hold", usage=USAGE)
    parser.add_argument("mode", help="mode to hold while the command runs")
    parser.add_argument("--then", metavar="MODE", help="switch to MODE after the command")
    parser.add_argument("--reason", default="", help="shown in the Holds property")
    return parser


def configure(parser: argparse.ArgumentParser) -> None:
    """MODE [--then MODE] [--reason TEXT] -- COMMAND…, split at `--` by run()."""
    parser.usage = USAGE
    parser.epilog = ("MODE: the mode to hold (switched to first if needed); --then MODE: "
                     "switch there after the command exits; --reason TEXT: shown in Holds.")
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def _say(text: str) -> None:
    print(f"mushishi hold: {text}", file=sys.stderr, flush=True)


async def _switch_and_wait(client: GpuModeClient, mode: str, cookie_for: str | None = None,
                           reason: str = "", why: str | None = None
                           ) -> tuple[bool, int | None]:
    """Switch to `mode` (holding it from the start when `cookie_for` names the holder; `why`
    is gpud's LastSwitchReason, `manual` when None)."""
    await client.watch()
    await client.switch(mode, False, reason=why)
    cookie = await client.hold(mode, cookie_for, reason) if cookie_for else None
    outcome = await client.wait_switch(
        mode, (lambda text: _say(text)) if sys.stderr.isatty() else None)
    if not outcome.ok:
        _say(f"switch to {mode} failed: {outcome.reason}")
    return outcome.ok, cookie


async def _run_job(argv: list[str]) -> int:
    try:
        child = await asyncio.create_subprocess_exec(*argv)
    except OSError as error:
        _say(f"cannot run {argv[0]}: {error.strerror or error}")
        return 127
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, child.send_signal, signum)
    # Ctrl-C reaches the job from the terminal; this command waits for it to finish.
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    status = await child.wait()
    return status if status >= 0 else 128 - status


async def _hold(args: argparse.Namespace, argv: list[str]) -> int:
    client = await GpuModeClient.connect()
    holder = f"mushishi hold: {shlex.join(argv)}"[:200]
    try:
        props = await client.properties()
        if props.active_mode == args.mode and props.state in ("ready", "off"):
            cookie: int | None = await client.hold(args.mode, holder, args.reason)
        else:
            ok, cookie = await _switch_and_wait(client, args.mode, holder, args.reason)
            if not ok:
                if cookie is not None:
                    with contextlib.suppress(BusError):
                        await client.release(cookie)
                return 1
        _say(f"holding {args.mode} while `{shlex.join(argv)}` runs")
        status = await _run_job(argv)
        assert cookie is not None
        try:
            await client.release(cookie)
        except BusError as error:
            if error.name != dbus_names.ERROR_UNKNOWN_HOLD:
                raise
            _say(f"the hold had already ended: {error.text}")
        if args.then:
            _say(f"job exited with {status}; switching to {args.then}")
            ok, _ = await _switch_and_wait(client, args.then, why="hold-then")
            if not ok and status == 0:
                return 1
        return status
    finally:
        client.close()


def run(args: argparse.Namespace) -> int:
    """Hold, run, release, maybe switch on; exit with the job's status."""
    arguments = list(args.arguments)
    if "--" not in arguments or arguments.index("--") == len(arguments) - 1:
        print(f"usage: {USAGE}\nmushishi hold: give the command to run after `--`",
              file=sys.stderr)
        return 64
    split = arguments.index("--")
    options = _options().parse_args(arguments[:split])
    argv = arguments[split + 1:]
    return run_command("hold", _hold(options, argv))
