"""Where a routed request's time goes: mushishi-router profiled under wrk.

Starts two nginx `return 200` backends and the router, drives it with wrk at `--connections`
(16 by default) for `--seconds`, and profiles it meanwhile:

* `--sampler py-spy` (the default when py-spy is installed: `pip install py-spy`): samples
  the running router 500 times a second without slowing it down much, and prints the CPU
  time per request, where it goes by module (send syscalls, the event loop's own C code,
  aiohttp, the router's modules), and the functions with the most time of their own and in
  total;
* `--sampler cprofile`: runs the router under cProfile (which slows it about 2x: read the
  shares, not the rates) and prints the functions with the most cumulative time.

    .venv/bin/python benchmarks/router/profile_router.py [--connections 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.router.run import (  # noqa: E402  (the repository is put on the path first)
    BINDIR,
    COMPLETION,
    Processes,
    free_port,
    mushishi_config,
    nginx_conf,
    post_script,
    wait_port,
    wrk,
)

SAMPLES_PER_S = 500


def group(frame: str) -> str:
    """The part of the process a py-spy frame belongs to."""
    function, _, where = frame.partition(" (")
    if function in ("_Connection.send", "StreamWriter._writelines"):
        return "send() syscalls (to the backend, to the client)"
    if function == "Runner.run":
        return "the event loop's own C code (uvloop: epoll, recv, callbacks)"
    path = where.split(":")[0]
    for marker, name in (("/services/router/", "router: "), ("/shared/", "shared: "),
                         ("site-packages/", ""), ("python3.", "stdlib: ")):
        if marker in path:
            tail = path.split(marker, 1)[1]
            if marker == "site-packages/":
                return tail.split("/")[0]
            if marker == "python3.":
                return "stdlib: " + tail.split("/", 1)[-1].split("/")[0]
            return name + tail
    return path or "other"


def summarize_py_spy(raw: Path, requests: float, top: int) -> str:
    """py-spy's collapsed stacks as a per-request summary."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    groups: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        total += samples
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        frames = [re.sub(r" \(/.*/(site-packages|services|shared|python3\.\d+)/", r" (\1/", f)
                  for f in frames]
        for frame in set(frames):
            inclusive[frame] += samples
        own[frames[-1]] += samples
        groups[group(stack.split(";")[-1])] += samples
    cpu_ms = total / SAMPLES_PER_S * 1000 / max(requests, 1)
    out = [f"{total} samples, {requests:.0f} requests: {cpu_ms:.3f} ms of CPU per request",
           "", "by part:"]
    out += [f"  {count / total:6.1%}  {name}" for name, count in groups.most_common(top)]
    out += ["", "own time:"]
    out += [f"  {count / total:6.1%}  {name}" for name, count in own.most_common(top)]
    out += ["", "total time (the function and what it calls; the entry point's frames left out):"]
    out += [f"  {count / total:6.1%}  {name}" for name, count in inclusive.most_common()
            if count < 0.8 * total][:top]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = "py-spy" if shutil.which("py-spy") or (BINDIR / "py-spy").exists() \
        else "cprofile"
    parser.add_argument("--sampler", choices=("py-spy", "cprofile"), default=default)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None, help="also write the summary here")
    parser.add_argument("--raw", type=Path, default=None,
                        help="keep the raw profile here (cProfile's stats or py-spy's folded "
                             "stacks), e.g. to compare two routers' calls per request")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mushishi-profile-"))
    processes = Processes()
    raw = work / ("router.prof" if args.sampler == "cprofile" else "router.folded")
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
        argv = [sys.executable, "-m", "mushishi.services.router", "--config", str(config)]
        if args.sampler == "cprofile":
            argv[1:1] = ["-m", "cProfile", "-o", str(raw)]
        router = subprocess.Popen(argv, env=environment, stderr=subprocess.DEVNULL)
        wait_port(port)
        time.sleep(0.5)  # first probes
        sampler = None
        if args.sampler == "py-spy":
            spy = shutil.which("py-spy") or str(BINDIR / "py-spy")
            sampler = subprocess.Popen(
                [spy, "record", "-p", str(router.pid), "-d", str(args.seconds), "-r",
                 str(SAMPLES_PER_S), "-f", "raw", "-o", str(raw), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        result = wrk(f"http://127.0.0.1:{port}/v1/chat/completions", args.connections,
                     args.seconds, post_script(work))
        if sampler is not None:
            sampler.wait(60)
        router.send_signal(signal.SIGTERM)
        router.wait(60)
    finally:
        processes.stop_all()
    header = (f"# benchmarks/router/profile_router.py --sampler {args.sampler} --connections "
              f"{args.connections}, {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, "
              f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}\n"
              f"wrk at {args.connections} connection(s): {result['rps']:.0f} req/s, p50 "
              f"{result['p50_ms']:.3f} ms\n")
    if args.sampler == "py-spy":
        body = summarize_py_spy(raw, result["requests"], args.top)
    else:
        text = io.StringIO()
        stats = pstats.Stats(str(raw), stream=text)
        stats.sort_stats("cumulative").print_stats(args.top)
        body = text.getvalue()
    print(header + body)
    if args.out is not None:
        args.out.write_text(header + body + "\n")
    if args.raw is not None:
        shutil.copyfile(raw, args.raw)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
