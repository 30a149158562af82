"""Router overhead, throughput, streaming and failover: mushishi against its peers, one run.

Targets, all on loopback, in the same run, against the same backends:
  direct    the backend itself (nginx `return 200` with a chat completion body)
  nginx     nginx proxy_pass to it (the floor)
  aiohttp-passthrough  a bare 20-line aiohttp + uvloop pass-through (the Python ceiling)
  mushishi  mushishi-router (uvloop, one process) with auth, routing, metrics, journal/stderr log
  litellm   LiteLLM proxy (own virtualenv, one worker), defaults and documented production settings

Measured with wrk: requests/s at concurrency 16, latency p50/p99 at concurrency 1 and 64
(added latency = target - direct). Streaming tokens/s through each proxy relative to direct,
against the stand-in vLLM (tests/standins): 400 tokens at up to 200 tokens/s. Router RSS
at 500 concurrent streams. Failover: a GPU backend known down through the mode signal (gpud
stand-in on a private bus), a refused connection, and a hung backend.

Usage: .venv/bin/python benchmarks/router/run.py [--quick] [--no-litellm] [--out DIR]
LiteLLM is expected in benchmarks/.venvs/litellm (see benchmarks/router/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BINDIR = Path(sys.executable).parent
LITELLM = REPO / "benchmarks" / ".venvs" / "litellm" / "bin" / "litellm"
KEY = "sk-bench"
CHAT_BODY = {"model": "bench", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": "bench-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_accepting(family: socket.AddressFamily, address: tuple[str, int] | str, where: str,
                    within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with socket.socket(family) as sock:
            if sock.connect_ex(address) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {where} after {within:g}s")


def wait_port(port: int, within: float = 60.0, host: str = "127.0.0.1") -> None:
    _wait_accepting(socket.AF_INET, (host, port), f"{host}:{port}", within)


def wait_unix(path: Path, within: float = 60.0) -> None:
    _wait_accepting(socket.AF_UNIX, str(path), str(path), within)


class Processes:
    """Every process the run starts, stopped at the end whatever happens."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        process = subprocess.Popen(argv, **kwargs)  # type: ignore[call-overload]
        self.running.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def stop_all(self) -> None:
        for process in reversed(self.running):
            self.stop(process)


def nginx_conf(directory: Path, listen: int, body: str | None = None,
               upstream: int | None = None, host: str = "127.0.0.1", *,
               connections: int = 4096, keepalive: int = 64,
               stream_requests: bool = False) -> Path:
    """An nginx that returns `body`, or proxies to `upstream` (keep-alive, no buffering;
    `stream_requests`: request bodies relayed as they arrive, of any size)."""
    directory.mkdir(parents=True, exist_ok=True)
    if upstream is not None:
        location = ("proxy_pass http://backend; proxy_http_version 1.1; "
                    "proxy_set_header Connection \"\"; proxy_buffering off;")
        if stream_requests:
            location += " proxy_request_buffering off;"
        upstream_block = (f"upstream backend {{ server 127.0.0.1:{upstream}; "
                          f"keepalive {keepalive}; }}")
    else:
        escaped = (body or "").replace("'", "\\'")
        location = f"default_type application/json; return 200 '{escaped}';"
        upstream_block = ""
    conf = directory / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {directory}/nginx.pid;
error_log {directory}/error.log error;
events {{ worker_connections {connections}; }}
http {{
  access_log off;
  {"client_max_body_size 0;" if stream_requests else ""}
  client_body_temp_path {directory}/body;
  proxy_temp_path {directory}/proxy;
  fastcgi_temp_path {directory}/fastcgi;
  uwsgi_temp_path {directory}/uwsgi;
  scgi_temp_path {directory}/scgi;
  keepalive_requests 1000000;
  {upstream_block}
  server {{ listen {host}:{listen}; location / {{ {location} }} }}
}}
""")
    return conf


def post_script(work: Path, model: str = "bench") -> Path:
    """A wrk script POSTing a one-line chat for `model` with the benchmark's key."""
    script = work / f"post-{model}.lua"
    script.write_text('wrk.method = "POST"\n'
                      f"wrk.body = '{json.dumps({**CHAT_BODY, 'model': model})}'\n"
                      'wrk.headers["Content-Type"] = "application/json"\n'
                      f'wrk.headers["Authorization"] = "Bearer {KEY}"\n')
    return script


def wrk_levels(name: str, url: str, seconds: int, script: Path) -> dict[str, dict[str, float]]:
    """wrk against `url` at concurrency 1, 16 and 64 (c1, c16, c64), announced as `name`."""
    print(f"measuring {name} …", flush=True)
    return {f"c{connections}": wrk(url, connections, seconds, script)
            for connections in (1, 16, 64)}


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, connections: int, seconds: int, script: Path) -> dict[str, float]:
    threads = 1 if connections < 16 else 2
    result = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s",
         str(script), url], capture_output=True, text=True, timeout=seconds + 60, check=True)
    out = result.stdout

    def latency(label: str) -> float:
        match = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not match:
            raise RuntimeError(f"no {label} in wrk output:\n{out}")
        value, unit = float(match[1]), match[2]
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    sent = re.search(r"(\d+) requests in", out)
    return {"rps": rps, "p50_ms": latency("50%"), "p99_ms": latency("99%"),
            "requests": float(sent[1]) if sent else 0.0,
            "non_2xx": float(errors[1]) if errors else 0.0,
            "socket_errors": socket_errors[1] if socket_errors else ""}  # type: ignore[dict-item]


async def stream_rate(url: str, headers: dict[str, str], repeats: int,
                      model: str = "bench") -> float:
    """Content chunks per second of one streamed answer, median of `repeats`."""
    import aiohttp

    rates = []
    async with aiohttp.ClientSession() as session:
        for _ in range(repeats):
            started = time.perf_counter()
            tokens = 0
            async with session.post(url, headers=headers, json={
                "model": model, "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}) as response:
                response.raise_for_status()
                async for line in response.content:
                    if line.startswith(b"data: {"):
                        tokens += 1
            rates.append(tokens / (time.perf_counter() - started))
    return statistics.median(rates)


async def hold_streams(url: str, headers: dict[str, str], count: int) -> list[int]:
    """Open `count` streams at once and read them to the end; returns their statuses."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=300)) as session:
        async def one() -> int:
            async with session.post(url, headers=headers, json={
                "model": "bench", "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}) as response:
                async for _ in response.content:
                    pass
                return response.status
        return await asyncio.gather(*(one() for _ in range(count)))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def router_toml(directory: Path, port: int, router: str, rest: str, profiles: list[str], *,
                state: str = "state", key: str = KEY) -> Path:
    """A router config written to `directory`, listening on `port`: `router` adds [router]
    settings, `rest` the other sections, and `key` may use `profiles`."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "mushishi.toml"
    allowed = ", ".join(f'"{profile}"' for profile in profiles)
    config.write_text(f"""
[router]
listen = ["127.0.0.1:{port}"]
egress_socket = "{directory}/egress.sock"
state_dir = "{directory}/{state}"
{router}
{rest}
[keys]
"{hashlib.sha256(key.encode()).hexdigest()}" = [{allowed}]
""")
    return config


def mushishi_config(directory: Path, port: int, primary: str, secondary: str,
                    extra: str = "", tier: str = "T2") -> Path:
    return router_toml(directory, port, f"""probe_interval_s = 0.1
connect_timeout_s = 1
first_byte_timeout_s = 1
{extra}""", f"""
[backends.primary]
url = "{primary}"
model = "bench-model"

[backends.secondary]
url = "{secondary}"
model = "bench-model"

[profiles.bench]
tier = "{tier}"
chain = ["primary", "secondary"]
""", ["bench"])


@contextlib.contextmanager
def router(processes: Processes, config: Path, port: int,
           env: dict[str, str] | None = None, bindir: Path = BINDIR,
           journal: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """mushishi-router from `bindir` (default: this checkout's virtualenv) on `config`; with
    `journal`, logging to that datagram socket as journald's (`with_journal`)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MUSHISHI_")}
    environment.update(env or {})
    argv = [str(bindir / "mushishi-router"), "--config", str(config)]
    process = processes.start(with_journal(journal, argv) if journal else argv,
                              env=environment)
    wait_port(port)
    time.sleep(0.5)  # first probes
    try:
        yield process
    finally:
        processes.stop(process)


def with_journal(socket_path: Path, argv: list[str]) -> list[str]:
    """`argv` in a mount namespace of its own whose /run/systemd/journal/socket is
    `socket_path` (a tmpfs on /run there; the host's /run is not touched), so a daemon logs
    through its JournalHandler as under systemd. Needs root, like `unshare --mount`."""
    script = ('mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && '
              'ln -s "$0" /run/systemd/journal/socket && exec "$@"')
    return ["unshare", "--mount", "sh", "-c", script, str(socket_path), *argv]


# Stands in for journald: receives every datagram sent to argv[1], and throws it away.
JOURNAL_DRAIN = r"""
import socket, sys
server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
server.bind(sys.argv[1])
print("ready", flush=True)
while True:
    server.recv(1 << 17)
"""


def journal_drain(processes: Processes, socket_path: Path) -> None:
    """A process that takes journald's place on `socket_path` (`JOURNAL_DRAIN`)."""
    process = processes.start([sys.executable, "-c", JOURNAL_DRAIN, str(socket_path)],
                              stdout=subprocess.PIPE, text=True)
    if process.stdout is None or process.stdout.readline().strip() != "ready":
        raise RuntimeError("the journal stand-in did not start")


def litellm_config(directory: Path, primary: int, secondary: int, production: bool) -> Path:
    config = directory / ("litellm-prod.yaml" if production else "litellm.yaml")
    settings = ""
    if production:  # docs.litellm.ai/docs/proxy/prod
        settings = """
litellm_settings:
  set_verbose: false
  json_logs: true
  request_timeout: 600
general_settings:
  master_key: sk-bench
  disable_spend_logs: true
  disable_error_logs: true
  proxy_batch_write_at: 60
"""
    else:
        settings = "\ngeneral_settings:\n  master_key: sk-bench\n"
    config.write_text(f"""
model_list:
  - model_name: bench
    litellm_params:
      model: openai/bench-model
      api_base: http://127.0.0.1:{primary}/v1
      api_key: unused
  - model_name: bench-fallback
    litellm_params:
      model: openai/bench-model
      api_base: http://127.0.0.1:{secondary}/v1
      api_key: unused
router_settings:
  fallbacks: [{{"bench": ["bench-fallback"]}}]
{settings}""")
    return config


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    return {"cpu": cpu, "cores": str(os.cpu_count()), "kernel": platform.release(),
            "python": platform.python_version(), "load_before": f"{load[0]:.2f}",
            "time": datetime.now(UTC).isoformat(timespec="seconds")}


def arguments() -> argparse.Namespace:
    """The options of the router benchmarks (this one and cloud_hop.py)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="3 s per wrk run (default 10 s)")
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    return parser.parse_args()


def missing_tool(with_litellm: bool) -> str | None:
    """What this machine lacks to run the benchmark (wrk, nginx, LiteLLM), or None."""
    if shutil.which("wrk") is None or shutil.which("nginx") is None:
        return "wrk and nginx are needed: scripts/install-system-deps.sh"
    if with_litellm and not LITELLM.exists():
        return f"{LITELLM} is missing; see benchmarks/router/README.md"
    return None


def write_results(results: dict[str, object], out: Path, name: str, suffix: str = "") -> Path:
    """`results`, with the load after the run, as OUT/NAME-<UTC time>SUFFIX.json; printed too."""
    load = os.getloadavg()
    results["machine"]["load_after"] = f"{load[0]:.2f}"  # type: ignore[index]
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out / f"{name}-{stamp}{suffix}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"written {path}")
    return path


def main() -> int:
    args = arguments()
    seconds = 3 if args.quick else 10
    with_litellm = not args.no_litellm
    if (missing := missing_tool(with_litellm)) is not None:
        print(missing, file=sys.stderr)
        return 1
    results: dict[str, object] = {"machine": machine(), "seconds_per_run": seconds}
    processes = Processes()
    work = Path(tempfile.mkdtemp(prefix="mushishi-bench-"))
    script = post_script(work)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        backend, backend2 = free_port(), free_port()
        for port, name in ((backend, "backend"), (backend2, "backend2")):
            conf = nginx_conf(work / name, port, body=COMPLETION)
            processes.start(["nginx", "-c", str(conf), "-p", str(work / name)])
            wait_port(port)
        proxy = free_port()
        processes.start(["nginx", "-c", str(nginx_conf(work / "proxy", proxy, upstream=backend)),
                         "-p", str(work / "proxy")])
        wait_port(proxy)
        streamer_port = free_port()
        processes.start([sys.executable, "-m", "tests.standins.vllm", "--port",
                                    str(streamer_port), "--model", "bench-model", "--tokens",
                                    "400", "--token-delay", "0.005"], cwd=REPO, env=env)
        wait_port(streamer_port)
        slow_port = free_port()
        processes.start([sys.executable, "-m", "tests.standins.vllm", "--port", str(slow_port),
                         "--model", "bench-model", "--tokens", "60", "--token-delay", "0.1"],
                        cwd=REPO, env=env)
        wait_port(slow_port)

        targets: dict[str, str] = {
            "direct": f"http://127.0.0.1:{backend}/v1/chat/completions",
            "nginx": f"http://127.0.0.1:{proxy}/v1/chat/completions",
        }
        table: dict[str, dict[str, dict[str, float]]] = {}

        def measure(name: str, url: str) -> None:
            table[name] = wrk_levels(name, url, seconds, script)

        for name, url in targets.items():
            measure(name, url)
        bare = free_port()
        bare_process = processes.start([sys.executable, str(REPO / "benchmarks" / "router" /
                                                            "passthrough.py"), str(bare),
                                         targets["direct"]])
        wait_port(bare)
        measure("aiohttp-passthrough", f"http://127.0.0.1:{bare}/v1/chat/completions")
        processes.stop(bare_process)
        port = free_port()
        config = mushishi_config(work / "mushishi", port, f"http://127.0.0.1:{backend}/v1",
                                 f"http://127.0.0.1:{backend2}/v1")
        with router(processes, config, port) as process:
            measure("mushishi", f"http://127.0.0.1:{port}/v1/chat/completions")
            results["mushishi_rss_idle_mb"] = rss_mb(process.pid)
        # The same router with [traces] on, exporting every request to a stand-in OTLP/HTTP
        # collector (tests/standins): the cost of tracing, measured against the line above.
        collector_port = free_port()
        spans = work / "spans.jsonl"
        processes.start([sys.executable, "-m", "tests.standins.otlp_collector", "--port",
                         str(collector_port), "--record", str(spans)], cwd=REPO, env=env)
        wait_port(collector_port)
        tport = free_port()
        tconfig = mushishi_config(
            work / "mushishi-traced", tport, f"http://127.0.0.1:{backend}/v1",
            f"http://127.0.0.1:{backend2}/v1",
            extra=f'\n[traces]\nendpoint = "http://127.0.0.1:{collector_port}/v1/traces"\n')
        with router(processes, tconfig, tport):
            measure("mushishi-traced", f"http://127.0.0.1:{tport}/v1/chat/completions")
            time.sleep(3)  # the last batch is exported
        traced, plain = table["mushishi-traced"], table["mushishi"]
        results["traces_overhead"] = {
            "rps_c16_ratio_traced_to_untraced": traced["c16"]["rps"] / plain["c16"]["rps"],
            "added_p50_c1_ms": traced["c1"]["p50_ms"] - plain["c1"]["p50_ms"],
            "spans_received": sum(1 for _ in spans.open()) if spans.exists() else 0,
            "requests_sent_traced": sum(traced[c].get("requests", 0) for c in ("c1", "c16",
                                                                                "c64")),
        }
        if with_litellm:
            for production in (False, True):
                name = "litellm-production" if production else "litellm-defaults"
                lport = free_port()
                lconf = litellm_config(work, backend, backend2, production)
                lenv = {k: v for k, v in os.environ.items() if not k.startswith("MUSHISHI_")}
                if production:
                    lenv["LITELLM_LOG"] = "ERROR"
                lproc = processes.start([str(LITELLM), "--config", str(lconf), "--port",
                                         str(lport), "--host", "127.0.0.1", "--num_workers",
                                         "1"], env=lenv, cwd=work)
                wait_port(lport, within=180)
                time.sleep(2)
                measure(name, f"http://127.0.0.1:{lport}/v1/chat/completions")
                table[name]["rss_mb"] = {"value": rss_mb(lproc.pid)}  # type: ignore[dict-item]
                processes.stop(lproc)
        results["wrk"] = table
        direct = table["direct"]
        results["added_latency_ms"] = {
            name: {"c1_p50": row["c1"]["p50_ms"] - direct["c1"]["p50_ms"],
                   "c1_p99": row["c1"]["p99_ms"] - direct["c1"]["p99_ms"],
                   "c64_p50": row["c64"]["p50_ms"] - direct["c64"]["p50_ms"],
                   "c64_p99": row["c64"]["p99_ms"] - direct["c64"]["p99_ms"]}
            for name, row in table.items() if name != "direct"}
        results["mushishi_over_passthrough_rps_c16"] = (
            table["mushishi"]["c16"]["rps"] / table["aiohttp-passthrough"]["c16"]["rps"])
        if with_litellm:
            results["mushishi_over_litellm_rps_c16"] = {
                name: table["mushishi"]["c16"]["rps"] / table[name]["c16"]["rps"]
                for name in ("litellm-defaults", "litellm-production")}

        # Streaming: chunks/s through each proxy, relative to the stand-in directly.
        print("measuring streaming …", flush=True)
        headers = {"Authorization": f"Bearer {KEY}"}
        stream_targets = {"direct": f"http://127.0.0.1:{streamer_port}/v1/chat/completions"}
        sproxy = free_port()
        processes.start(["nginx", "-c", str(nginx_conf(work / "sproxy", sproxy,
                                                       upstream=streamer_port)),
                         "-p", str(work / "sproxy")])
        wait_port(sproxy)
        stream_targets["nginx"] = f"http://127.0.0.1:{sproxy}/v1/chat/completions"
        sport = free_port()
        sconfig = mushishi_config(work / "mushishi-stream", sport,
                                  f"http://127.0.0.1:{streamer_port}/v1",
                                  f"http://127.0.0.1:{backend2}/v1")
        with router(processes, sconfig, sport):
            stream_targets["mushishi"] = f"http://127.0.0.1:{sport}/v1/chat/completions"
            samples: dict[str, list[float]] = {name: [] for name in stream_targets}
            for _ in range(7):  # interleaved, so that load drift hits every target alike
                for name, url in stream_targets.items():
                    model = "bench" if name == "mushishi" else "bench-model"
                    samples[name].append(asyncio.run(stream_rate(url, headers, 1, model)))
        rates = {name: statistics.median(values) for name, values in samples.items()}
        results["streaming_chunks_per_s"] = rates
        results["streaming_ratio_to_direct"] = {
            name: rate / rates["direct"] for name, rate in rates.items()}

        # RSS at 500 concurrent streams (6 s each).
        print("measuring RSS at 500 streams …", flush=True)
        rport = free_port()
        rconfig = mushishi_config(work / "mushishi-rss", rport,
                                  f"http://127.0.0.1:{slow_port}/v1",
                                  f"http://127.0.0.1:{backend2}/v1")
        with router(processes, rconfig, rport) as process:
            peak = rss_mb(process.pid)
            before = peak

            async def streams_and_sample() -> list[int]:
                task = asyncio.create_task(hold_streams(
                    f"http://127.0.0.1:{rport}/v1/chat/completions", headers, 500))
                nonlocal peak
                while not task.done():
                    peak = max(peak, rss_mb(process.pid))
                    await asyncio.sleep(0.2)
                return await task

            statuses = asyncio.run(streams_and_sample())
        results["rss_500_streams_mb"] = {"before": before, "peak": peak,
                                         "ok": sum(1 for s in statuses if s == 200)}

        # Failover.
        print("measuring failover …", flush=True)
        results["failover_ms"] = failover(processes, work, backend, seconds)
    finally:
        processes.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    write_results(results, args.out, "router")
    return 0


def failover(processes: Processes, work: Path, backend: int, seconds: int) -> dict[str, object]:
    """Added latency when the first hop is down: by mode signal, refused, hung."""
    import aiohttp

    sys.path.insert(0, str(REPO))  # the stand-ins live under tests/
    from tests.standins.bus import PrivateBus
    from tests.standins.gpumode import GpuModeStandin

    out: dict[str, object] = {}
    headers = {"Authorization": f"Bearer {KEY}"}

    async def timed(url: str, count: int) -> list[float]:
        samples = []
        async with aiohttp.ClientSession() as session:
            for _ in range(count):
                started = time.perf_counter()
                async with session.post(url, headers=headers, json=CHAT_BODY) as response:
                    await response.read()
                    assert response.status == 200, response.status
                samples.append((time.perf_counter() - started) * 1000)
        return samples

    # Baseline: chain [backend] only.
    port = free_port()
    config = mushishi_config(work / "fo-base", port, f"http://127.0.0.1:{backend}/v1",
                             f"http://127.0.0.1:{backend}/v1")
    with router(processes, config, port):
        base = statistics.median(asyncio.run(timed(f"http://127.0.0.1:{port}/v1/chat/"
                                                   "completions", 200)))
    out["baseline_p50_ms"] = base

    # 1. The first hop's GPU mode is not active (gpud stand-in on a private bus).
    with PrivateBus() as bus:
        async def mode_run() -> float:
            gpud = await GpuModeStandin(["forensic", "creative"], "creative").connect(bus.address)
            try:
                return statistics.median(await timed(url, 200))
            finally:
                gpud.disconnect()

        port = free_port()
        dead = free_port()
        config = mushishi_config(work / "fo-mode", port, f"http://127.0.0.1:{dead}/v1",
                                 f"http://127.0.0.1:{backend}/v1")
        text = config.read_text().replace('model = "bench-model"\n',
                                          'model = "bench-model"\nmodes = ["forensic"]\n', 1)
        config.write_text(text)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        with router(processes, config, port, env={"DBUS_SYSTEM_BUS_ADDRESS": bus.address}):
            out["mode_inactive_added_p50_ms"] = asyncio.run(mode_run()) - base

    # 2. Connection refused on the first hop, before any probe noticed: the first hop is up,
    #    dies, and the very next request meets the refused connection.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    port, first = free_port(), free_port()
    config = mushishi_config(work / "fo-refused", port, f"http://127.0.0.1:{first}/v1",
                             f"http://127.0.0.1:{backend}/v1")
    config.write_text(config.read_text().replace("probe_interval_s = 0.1",
                                                 "probe_interval_s = 0.5"))
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    refused: list[float] = []

    async def first_hop_state() -> str:
        async with aiohttp.ClientSession() as session, \
                session.get(f"http://127.0.0.1:{port}/status") as response:
            return (await response.json())["backends"]["primary"]["state"]

    with router(processes, config, port):
        for _ in range(8):
            standin = processes.start([sys.executable, "-m", "tests.standins.vllm", "--port",
                                       str(first), "--model", "bench-model"], cwd=REPO, env=env)
            wait_port(first)
            deadline = time.monotonic() + 10
            while asyncio.run(first_hop_state()) != "up" and time.monotonic() < deadline:
                time.sleep(0.05)
            processes.stop(standin)
            refused.append(asyncio.run(timed(url, 1))[0])
        steady = statistics.median(asyncio.run(timed(url, 100)))
    out["refused_first_request_added_p50_ms"] = statistics.median(refused) - base
    out["refused_known_down_added_p50_ms"] = steady - base

    # 3. A hung first hop: bounded by first_byte_timeout_s (1 s here).
    hung_port = free_port()
    hung = processes.start([sys.executable, "-c", (
        "import asyncio\nfrom tests.standins.vllm import VllmStandin, Fault\n"
        "async def main():\n"
        f"    s = await VllmStandin('bench-model', port={hung_port}).start()\n"
        "    s.fail_always(Fault.hang())\n    await asyncio.Event().wait()\n"
        "asyncio.run(main())\n")], cwd=REPO, env=env)
    wait_port(hung_port)
    port = free_port()
    config = mushishi_config(work / "fo-hung", port, f"http://127.0.0.1:{hung_port}/v1",
                             f"http://127.0.0.1:{backend}/v1")
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    with router(processes, config, port):
        out["hung_first_request_added_ms"] = asyncio.run(timed(url, 1))[0] - base
        out["hung_first_byte_timeout_s"] = 1.0
    processes.stop(hung)
    return out


if __name__ == "__main__":
    sys.exit(main())
