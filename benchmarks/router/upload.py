"""A 20 MB multipart upload (an audio transcription) through mushishi-router against the same
upload sent directly to the speech server, and the router's memory while it relays them.

`.venv/bin/python benchmarks/router/upload.py [--rounds N] [--megabytes M]`: starts the
Whisper stand-in (tests/standins/speech.py, which reads the upload as it streams and hashes
it), a real mushishi-router and, as the peer, nginx streaming the request body
(`proxy_request_buffering off`, the floor for a relay), then rotates direct, nginx and
routed uploads of the same form (one keep-alive connection each, no retries), timing each
from the first byte sent to the last byte of the answer. The router also spools the upload
(for fallback) and checks the form; nginx only copies it. Memory: after a warm-up (small
uploads), the router's peak RSS is reset (`/proc/PID/clear_refs` 5); its growth is VmHWM
(the peak over every routed 20 MB upload) minus VmRSS before them, set against the bounded
buffer (UPLOAD_BUFFER_BYTES). The router's CPU time per upload is reported too: unlike the
times, it does not depend on what else the machine runs.
Prints one JSON object, also written to benchmarks/results/upload-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.router.run import (  # noqa: E402
    Processes,
    cpu_seconds,
    nginx_conf,
    router_toml,
    wait_port,
)
from mushishi.services.router.upload import UPLOAD_BUFFER_BYTES  # noqa: E402
from tests.ports import free_port  # noqa: E402
from tests.standins.speech import make_wav  # noqa: E402

KEY = "sk-bench-upload"
BOUNDARY = "mushishi-bench-boundary-7f3a"
BINDIR = Path(sys.executable).parent


def form(megabytes: float, model: str) -> bytes:
    """A transcription form: model, response_format, then a WAV file of about `megabytes`."""
    wav = make_wav(0.5)
    size = int(megabytes * 1024 * 1024)
    # A valid WAV header announcing the whole size, then pseudo-random audio (no boundary).
    data = hashlib.shake_256(b"mushishi").digest(size - len(wav))
    audio = wav + data
    head = "".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in (("model", model), ("response_format", "json")))
    return (head.encode() + f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
            'filename="long.wav"\r\nContent-Type: audio/wav\r\n\r\n'.encode()
            + audio + f"\r\n--{BOUNDARY}--\r\n".encode())


def post(connection: http.client.HTTPConnection, body: bytes, key: str | None) -> float:
    """Seconds for one upload, from the first byte sent to the last byte of the answer."""
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    started = time.perf_counter()
    connection.request("POST", "/v1/audio/transcriptions", body=body, headers=headers)
    response = connection.getresponse()
    answer = response.read()
    elapsed = time.perf_counter() - started
    if response.status != 200 or b"heard" not in answer:
        raise RuntimeError(f"upload failed: {response.status} {answer[:300]!r}")
    return elapsed


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def main() -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/router/upload.py")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--megabytes", type=float, default=20.0)
    args = parser.parse_args()
    processes = Processes()
    directory = Path(tempfile.mkdtemp(prefix="mushishi-upload-bench-"))
    whisper_port, router_port, nginx_port = free_port(), free_port(), free_port()
    config = router_toml(directory, router_port, f"""probe_interval_s = 1
max_body_bytes = {int(args.megabytes * 1024 * 1024) + 1024 * 1024}""", f"""
[backends.whisper]
url = "http://127.0.0.1:{whisper_port}/v1"
model = "whisper-bench"
endpoints = ["audio/transcriptions"]

[profiles.voice]
tier = "T1"
chain = ["whisper"]
""", ["voice"], key=KEY)
    load_before = os.getloadavg()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUSHISHI_")}
    env["PYTHONPATH"] = str(REPO)
    try:
        processes.start([sys.executable, "-m", "tests.standins.speech", "whisper",
                         str(whisper_port), "whisper-bench"], env=env, cwd=REPO)
        router = processes.start([str(BINDIR / "mushishi-router"), "--config", str(config)],
                                 env=env)
        processes.start(["nginx", "-c", str(nginx_conf(
            directory / "nginx", nginx_port, upstream=whisper_port, connections=64, keepalive=8,
            stream_requests=True))])
        wait_port(whisper_port)
        wait_port(router_port)
        wait_port(nginx_port)
        time.sleep(1.5)  # the first probe
        direct_body = form(args.megabytes, "whisper-bench")
        routed_body = form(args.megabytes, "voice")
        small, small_direct = form(0.5, "voice"), form(0.5, "whisper-bench")
        direct = http.client.HTTPConnection("127.0.0.1", whisper_port, timeout=120)
        routed = http.client.HTTPConnection("127.0.0.1", router_port, timeout=120)
        nginx = http.client.HTTPConnection("127.0.0.1", nginx_port, timeout=120)
        for _ in range(3):  # warm-up: connections, code paths, allocator
            post(routed, small, KEY)
            post(direct, small_direct, None)
            post(nginx, small_direct, None)
        Path(f"/proc/{router.pid}/clear_refs").write_text("5")  # reset VmHWM
        rss_before = status_kib(router.pid, "VmRSS")
        cpu_before = cpu_seconds(router.pid)
        times: dict[str, list[float]] = {"direct": [], "nginx": [], "router": []}
        targets = {"direct": (direct, direct_body, None), "nginx": (nginx, direct_body, None),
                   "router": (routed, routed_body, KEY)}
        names = list(targets)
        for index in range(args.rounds):
            for name in names[index % 3:] + names[:index % 3]:  # rotated: drift hits all
                connection, body, key = targets[name]
                times[name].append(post(connection, body, key))
        router_cpu = cpu_seconds(router.pid) - cpu_before
        peak = status_kib(router.pid, "VmHWM")
        rss_after = status_kib(router.pid, "VmRSS")
    finally:
        processes.stop_all()
    median = {k: statistics.median(v) for k, v in times.items()}
    growth_kib = peak - rss_before
    result = {
        "what": f"{args.megabytes:g} MB multipart transcription upload: direct, through nginx "
                "(streaming) and through mushishi-router, to the Whisper stand-in, rotated",
        "load_average_before": load_before,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_after": os.getloadavg(),
        "cpus": os.cpu_count(),
        "rounds": args.rounds,
        "body_bytes": len(routed_body),
        "direct_s": {"median": round(median["direct"], 4),
                     "all": [round(t, 4) for t in times["direct"]]},
        "nginx_s": {"median": round(median["nginx"], 4),
                    "all": [round(t, 4) for t in times["nginx"]]},
        "router_s": {"median": round(median["router"], 4),
                     "all": [round(t, 4) for t in times["router"]]},
        "router_over_direct": round(median["router"] / median["direct"], 3),
        "nginx_over_direct": round(median["nginx"] / median["direct"], 3),
        "router_over_nginx": round(median["router"] / median["nginx"], 3),
        # What the router's relaying costs, whatever the load: its CPU time per upload.
        "router_cpu_s_per_upload": round(router_cpu / args.rounds, 4),
        "router_rss_before_kib": rss_before,
        "router_rss_peak_kib": peak,
        "router_rss_after_kib": rss_after,
        "router_rss_growth_kib": growth_kib,
        "bounded_buffer_kib": UPLOAD_BUFFER_BYTES // 1024,
        "growth_over_buffer": round(growth_kib * 1024 / UPLOAD_BUFFER_BYTES, 3),
    }
    text = json.dumps(result, indent=2)
    print(text)
    out = REPO / "benchmarks" / "results" / \
        f"upload-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
