"""cProfile of mushishi-router under load: where a routed request's time goes.

Starts two nginx `return 200` backends and the router under `python -m cProfile`, drives it
with wrk at 16 connections for 10 s, stops the router with SIGTERM (it drains and exits, so
cProfile writes its file), and prints the functions with the most cumulative time.

    .venv/bin/python benchmarks/router/profile_router.py [--out FILE.prof]

cProfile slows the router about 2x (1,182–1,285 req/s under it against 2,543 without): read
the shares, not the rates.
"""

from __future__ import annotations

import argparse
import io
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.router.run import (  # noqa: E402  (the repository is put on the path first)
    COMPLETION,
    Processes,
    mushishi_config,
    nginx_conf,
    post_script,
    wait_port,
    wrk,
)
from tests.ports import free_port  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "router.prof")
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mushishi-profile-"))
    processes = Processes()
    try:
        backends = []
        for name in ("primary", "secondary"):
            port = free_port()
            processes.start(["nginx", "-c", str(nginx_conf(work / name, port, body=COMPLETION)),
                             "-p", str(work / name)])
            wait_port(port)
            backends.append(f"http://127.0.0.1:{port}/v1")
        port = free_port()
        config = mushishi_config(work / "router", port, *backends)
        environment = {k: v for k, v in os.environ.items() if not k.startswith("MUSHISHI_")}
        router = subprocess.Popen(
            [sys.executable, "-m", "cProfile", "-o", str(args.out), "-m",
             "mushishi.services.router", "--config", str(config)],
            env=environment, stderr=subprocess.DEVNULL)
        wait_port(port)
        time.sleep(0.5)  # first probes
        result = wrk(f"http://127.0.0.1:{port}/v1/chat/completions", 16, args.seconds,
                     post_script(work))
        router.send_signal(signal.SIGTERM)
        router.wait(60)
    finally:
        processes.stop_all()
    print(f"wrk at 16 connections under cProfile: {result['rps']:.0f} req/s")
    text = io.StringIO()
    stats = pstats.Stats(str(args.out), stream=text)
    total = stats.total_tt  # type: ignore[attr-defined]
    stats.sort_stats("cumulative").print_stats(25)
    print(text.getvalue())
    for function, (_, _, _, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        if function[0].endswith("services/router/app.py") and function[2] == "finish":
            print(f"Router.finish (log record + metrics per request): {cumulative:.2f} s of "
                  f"{total:.2f} s profiled ({cumulative / total:.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
