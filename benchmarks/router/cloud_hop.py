"""The cloud hop: client -> mushishi-router -> mushishi-egress -> provider, against LiteLLM
doing the same hop (client -> LiteLLM proxy -> provider), in one run on one machine.

Targets, measured with wrk (requests/s at concurrency 16, latency p50/p99 at concurrency 1
and 64; added latency = target - direct):
  direct          the "provider" itself: nginx `return 200` with a chat completion (usage
                  included) on 203.0.113.10, a non-local address
  mushishi-local  the router alone, to a local backend (the same nginx body on 127.0.0.1):
                  what the router costs without the egress
  mushishi-cloud  router -> egress (unix socket, peer check, sovereignty re-check, budget
                  check, reservation and settlement in the SQLite ledger on disk, fsync'd)
                  -> provider, with a requests and a tokens budget configured
  litellm         LiteLLM proxy 1.108.7 (one worker) to the same provider with its key, with
                  and without provider_budget_config (its per-provider budget)

Everything runs in a private network namespace (the script re-executes itself under
`unshare --net`, so it needs root) where 203.0.113.10 is on lo: a real non-local address,
which the egress classifies as cloud exactly like api.groq.com; nothing leaves the machine.

Usage: .venv/bin/python benchmarks/router/cloud_hop.py [--quick] [--no-litellm] [--out DIR]
LiteLLM is expected in benchmarks/.venvs/litellm (see benchmarks/router/README.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
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
    KEY,
    LITELLM,
    Processes,
    arguments,
    free_port,
    machine,
    missing_tool,
    nginx_conf,
    post_script,
    router_toml,
    rss_mb,
    wait_port,
    wait_unix,
    write_results,
    wrk_levels,
)

CLOUD = "203.0.113.10"
PROVIDER_KEY = "sk-provider-bench"
INSIDE = "MUSHISHI_BENCH_NETNS"


def mushishi_config(directory: Path, port: int, cloud_port: int, local_port: int) -> Path:
    return router_toml(directory, port, "probe_interval_s = 1", f"""
[backends.local]
url = "http://127.0.0.1:{local_port}/v1"
model = "bench-model"

[backends.cloud]
url = "http://{CLOUD}:{cloud_port}/v1"
model = "bench-model"
api_key_credential = "bench-provider-key"
budget = {{ requests_per_day = 100000000, tokens_per_day = 100000000000 }}

[profiles.local]
tier = "T2"
chain = ["local"]

[profiles.cloudy]
tier = "T3"
chain = ["cloud"]

[egress]
state_dir = "{directory}/egress-state"
allowed_peers = ["{os.getuid()}"]
metrics_listen = "127.0.0.1:{free_port()}"
""", ["local", "cloudy"], state="router-state")


def litellm_config(directory: Path, cloud_port: int, budget: bool) -> Path:
    config = directory / ("litellm-budget.yaml" if budget else "litellm.yaml")
    router_settings = ""
    if budget:  # docs.litellm.ai/docs/proxy/provider_budget_routing
        router_settings = ("router_settings:\n  provider_budget_config:\n"
                           "    openai:\n      budget_limit: 1000000\n      time_period: 1d\n")
    config.write_text(f"""
model_list:
  - model_name: cloudy
    litellm_params:
      model: openai/bench-model
      api_base: http://{CLOUD}:{cloud_port}/v1
      api_key: {PROVIDER_KEY}
      input_cost_per_token: 0.0000006
      output_cost_per_token: 0.0000025
{router_settings}general_settings:
  master_key: {KEY}
""")
    return config


def ledger_requests(directory: Path) -> int:
    import sqlite3

    with sqlite3.connect(f"file:{directory}/egress-state/ledger.sqlite3?mode=ro",
                        uri=True) as connection:
        row = connection.execute("SELECT sum(requests) FROM usage").fetchone()
    return int(row[0] or 0)


def run(args: argparse.Namespace) -> int:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "addr", "add", f"{CLOUD}/32", "dev", "lo"], check=True)
    seconds = 3 if args.quick else 10
    with_litellm = not args.no_litellm
    results: dict[str, object] = {"machine": machine(), "seconds_per_run": seconds}
    processes = Processes()
    work = Path(tempfile.mkdtemp(prefix="mushishi-cloud-bench-", dir="/var/tmp"))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MUSHISHI_", "LISTEN_", "NOTIFY_"))}
    try:
        cloud_port, local_port = free_port(), free_port()
        for host, port, name in ((CLOUD, cloud_port, "cloud"), ("127.0.0.1", local_port,
                                                                 "local")):
            conf = nginx_conf(work / name, port, body=COMPLETION, host=host)
            processes.start(["nginx", "-c", str(conf), "-p", str(work / name)])
            wait_port(port, 120, host)
        table: dict[str, dict[str, object]] = {}

        def measure(name: str, url: str, model: str) -> None:
            table[name] = wrk_levels(name, url, seconds, post_script(work, model))

        measure("direct", f"http://{CLOUD}:{cloud_port}/v1/chat/completions", "bench-model")
        port = free_port()
        directory = work / "mushishi"
        config = mushishi_config(directory, port, cloud_port, local_port)
        menv = {**env, "MUSHISHI_CREDENTIAL_BENCH_PROVIDER_KEY": PROVIDER_KEY}
        egress = processes.start([str(BINDIR / "mushishi-egress"), "--config", str(config)],
                                 env=menv)
        wait_unix(directory / "egress.sock")
        router = processes.start([str(BINDIR / "mushishi-router"), "--config", str(config)],
                                 env=menv)
        wait_port(port, 120)
        time.sleep(1.5)  # first probes of the local backend
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        measure("mushishi-local", url, "local")
        measure("mushishi-cloud", url, "cloudy")
        results["mushishi_rss_mb"] = {"router": rss_mb(router.pid), "egress": rss_mb(egress.pid)}
        processes.stop(router)
        processes.stop(egress)
        counted = ledger_requests(directory)
        answered = sum(int(row["requests"]) for row in  # type: ignore[index]
                       (table["mushishi-cloud"][c] for c in ("c1", "c16", "c64")))
        # wrk counts answers it read; requests in flight when each run stops (at most
        # 1 + 16 + 64) were answered by the egress, and counted, but not read by wrk.
        results["egress_ledger"] = {"requests_counted": counted, "requests_answered_by_wrk":
                                    answered, "cut_by_wrk_at_most": 1 + 16 + 64}
        if with_litellm:
            for budget in (False, True):
                name = "litellm-budget" if budget else "litellm"
                lport = free_port()
                lconf = litellm_config(work, cloud_port, budget)
                lenv = {**env, "LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
                lproc = processes.start([str(LITELLM), "--config", str(lconf), "--port",
                                         str(lport), "--host", "127.0.0.1", "--num_workers",
                                         "1"], env=lenv, cwd=work)
                wait_port(lport, within=240)
                time.sleep(2)
                measure(name, f"http://127.0.0.1:{lport}/v1/chat/completions", "cloudy")
                table[name]["rss_mb"] = rss_mb(lproc.pid)
                processes.stop(lproc)
        results["wrk"] = table

        def get(name: str, level: str, key: str) -> float:
            return float(table[name][level][key])  # type: ignore[index]

        results["added_latency_ms"] = {
            name: {"c1_p50": get(name, "c1", "p50_ms") - get("direct", "c1", "p50_ms"),
                   "c1_p99": get(name, "c1", "p99_ms") - get("direct", "c1", "p99_ms"),
                   "c64_p50": get(name, "c64", "p50_ms") - get("direct", "c64", "p50_ms")}
            for name in table if name != "direct"}
        results["egress_added_c1_p50_ms"] = (get("mushishi-cloud", "c1", "p50_ms")
                                             - get("mushishi-local", "c1", "p50_ms"))
        if with_litellm:
            results["mushishi_cloud_over_litellm_rps_c16"] = {
                name: get("mushishi-cloud", "c16", "rps") / get(name, "c16", "rps")
                for name in ("litellm", "litellm-budget")}
    finally:
        processes.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    suffix = ("-quick" if args.quick else "") + ("-no-litellm" if args.no_litellm else "")
    write_results(results, args.out, "cloud-hop", suffix)
    return 0


def main() -> int:
    args = arguments()
    if (missing := missing_tool(not args.no_litellm)) is not None:
        print(missing, file=sys.stderr)
        return 1
    if os.environ.get(INSIDE) != "1":  # a private network namespace with a "cloud" address
        return subprocess.run(["unshare", "--net", "--", sys.executable, *sys.argv],
                              env={**os.environ, INSIDE: "1"}, check=False).returncode
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
