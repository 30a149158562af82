"""`python -m mushishi.firewall.guard`: restore the previous rules unless confirmed in time.

Started by `apply` in a session of its own. It waits until the deadline, or until
SIGTERM/SIGHUP/SIGINT arrives, then restores the previous table if its change is still
pending. `confirm` removes the pending change before signalling it, so a confirmed
change is never rolled back; a guard killed by a logout (logind's KillUserProcesses)
rolls back at once, which is what an operator who lost the box wants.
"""

from __future__ import annotations

import argparse
import logging
import signal
import time
from collections.abc import Sequence

from mushishi.firewall.apply import GUARD_SIGNALS, Firewall, FirewallError
from mushishi.firewall.nft import Nft
from mushishi.firewall.state import StateDir
from mushishi.shared.journal import setup_logging

log = logging.getLogger("mushishi.firewall.guard")



def wait_until(deadline: float) -> int | None:
    """Block until `deadline` (epoch seconds) or one of the signals; return the signal."""
    signal.pthread_sigmask(signal.SIG_BLOCK, GUARD_SIGNALS)
    while True:
        remaining = deadline - time.time()
        if remaining <= 0:
            return None
        info = signal.sigtimedwait(GUARD_SIGNALS, remaining)
        if info is not None:
            return info.si_signo


def main(argv: Sequence[str] | None = None) -> int:
    """Wait, then roll back the change identified by --token if it is still pending."""
    parser = argparse.ArgumentParser(prog="mushishi-firewall-guard")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--deadline", required=True, type=float)
    parser.add_argument("--nft", required=True)
    parser.add_argument("--textfile-dir")
    args = parser.parse_args(argv)
    setup_logging("mushishi-firewall")
    received = wait_until(args.deadline)
    firewall = Firewall(Nft(args.nft), StateDir(args.state_dir), args.textfile_dir)
    if received is None:
        reason = "not confirmed before the deadline"
    else:
        reason = f"the guard got {signal.Signals(received).name} before confirmation"
    try:
        firewall.rollback(reason, token=args.token)
    except FirewallError as error:
        log.critical("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
