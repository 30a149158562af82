"""The chaos soak's short form (benchmarks/soak, issue 14 item 5): the whole stack in a
booted systemd, a minute of mixed load (openai and anthropic SDKs without retries, a raw
keep-alive aiohttp client; streamed and not; T1, T2, T3) while router and egress restarts,
CPU floor SIGKILL/SIGSTOP, GPU mode switches, dropped backend connections, cloud 429/5xx
and a full ledger disk are injected at random. The same invariants as the long run.

Run in its own process (it enters the sandbox's network namespace); sized for 2 cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.paths import REPO

SECONDS = 75
CONCURRENCY = 6


def test_chaos_soak_short_form_keeps_every_invariant(
    llama_server_binary: Path, tiny_model: Path, tmp_path: Path,
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak", "--seconds", str(SECONDS),
         "--concurrency", str(CONCURRENCY), "--fault-min-s", "2", "--fault-max-s", "5",
         "--out", str(tmp_path), "--llama-server", str(llama_server_binary),
         "--tiny-model", str(tiny_model)],
        cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    written = sorted(tmp_path.glob("soak-*.json"))
    assert written, f"the soak wrote no result ({result.returncode}):\n" \
                    f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
    report = json.loads(written[-1].read_text())
    table = (tmp_path / written[-1].name.replace(".json", ".md")).read_text()
    assert report["requests"] > 50, table
    assert sum(report["faults"].values()) >= 5, table
    assert report["invariants"] and all(report["invariants"].values()), table
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
