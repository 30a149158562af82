"""Run the real mushishi-egress daemon as its own process, for tests that kill it.

`python -m tests.integration.egress.run_egress --config PATH --hosts '{"kimi.test": "127.0.0.1"}'`
is `mushishi-egress --config PATH` (same entry point, logging, config loading, lifecycle,
signals) with one difference: provider hostnames resolve through the given table instead of
the system's DNS (tests/integration/egress/harness.py explains why).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from mushishi.services.egress.app import run_egress
from mushishi.shared.config import LoadedConfig
from mushishi.shared.daemon import run_daemon
from mushishi.shared.notify import Notifier
from tests.integration.egress.harness import StaticResolver


def main() -> int:
    """Parse --hosts, then run the daemon as mushishi-egress does."""
    hosts: dict[str, str] = {}

    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--hosts", required=True, help="JSON: hostname -> address")

    def body(args: argparse.Namespace, loaded: LoadedConfig, notifier: Notifier) -> int:
        hosts.update(json.loads(args.hosts))
        return asyncio.run(run_egress(loaded, notifier, resolver=StaticResolver(hosts)))

    return run_daemon("egress", "mushishi-egress (test resolver)", body, configure=configure)


if __name__ == "__main__":
    sys.exit(main())
