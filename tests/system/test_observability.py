"""Observability of the whole stack in a booted systemd: a real Prometheus scrapes the real
daemons and answers for their series through its HTTP API; `promtool check metrics` passes
on every exporter's output and every oneshot's textfile; docs/observability.md lists exactly
the metrics that exist; `mushishi status --json` names a stopped daemon and still shows the
rest; the bench unit runs hardened and the watchdog reads what it wrote."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.sandbox import Sandbox
from tests.paths import REPO
from tests.system.stack import MUSHISHI, boot_stack, status_json

PROMETHEUS_CONFIG = "/etc/mushishi-test/prometheus.yml"
PROMETHEUS = "http://127.0.0.1:9090"
TEXTFILES = "/var/lib/prometheus/node-exporter"
EXPORTERS = {"mushishi-router": "127.0.0.1:4000", "mushishi-gpud": "127.0.0.1:9642",
             "mushishi-cpu-floor": "127.0.0.1:9643", "mushishi-egress": "127.0.0.1:9641"}
KEY = "change-me"  # the example config's key (its sha256 is in [keys])


@pytest.fixture(scope="module")
def stack(llama_server_binary: Path, tiny_model: Path) -> Iterator[Sandbox]:
    box = boot_stack(llama_server_binary, tiny_model)
    try:
        yield box
    finally:
        box.stop()


def curl(box: Sandbox, *args: str) -> str:
    return box.run(["curl", "-sS", "--fail", "--max-time", "10", *args]).stdout


def chat(box: Sandbox, profile: str) -> dict[str, Any]:
    body = json.dumps({"model": profile, "max_tokens": 4,
                       "messages": [{"role": "user", "content": "hello"}]})
    return json.loads(curl(box, "-H", f"Authorization: Bearer {KEY}", "-H",
                           "Content-Type: application/json", "--data", body,
                           "http://127.0.0.1:4000/v1/chat/completions"))


def query(box: Sandbox, promql: str) -> list[dict[str, Any]]:
    answer = json.loads(curl(box, "--get", "--data-urlencode", f"query={promql}",
                             f"{PROMETHEUS}/api/v1/query"))
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def wait_query(box: Sandbox, promql: str, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Until the query returns at least one sample (scrapes every second)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = query(box, promql)
        if result:
            return result
        time.sleep(0.5)
    targets = curl(box, f"{PROMETHEUS}/api/v1/targets")
    raise AssertionError(f"no sample for {promql} in {timeout:g}s; targets: {targets[:3000]}")


def wait_ready(box: Sandbox, timeout: float = 60.0) -> None:
    """Until Prometheus answers /-/ready (it replays its WAL and opens its TSDB first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = box.run(["curl", "-sS", "--fail", "--max-time", "2", f"{PROMETHEUS}/-/ready"],
                        check=False)
        if ready.returncode == 0:
            return
        time.sleep(0.2)
    journal = box.journal("-u", "test-prometheus.service", "-o", "cat")
    raise AssertionError(f"Prometheus not ready in {timeout:g}s:\n{journal[-3000:]}")


def families(text: str) -> dict[str, str]:
    """Metric family -> type, from `# TYPE` lines."""
    found = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            found[name] = kind
    return found


@pytest.fixture(scope="module")
def oneshots_ran(stack: Sandbox) -> Sandbox:
    """Every oneshot has run once, so each has written its textfile."""
    stack.systemctl("start", "mushishi-backup.service", timeout=300)
    stack.systemctl("start", "mushishi-backup-check.service", timeout=300)
    stack.systemctl("start", "mushishi-bench.service", timeout=300)
    stack.systemctl("start", "mushishi-watchdog.service", timeout=300)
    # The sandbox has no sshd and no tailscale0: override the lock-out guard (a console is
    # all there is), then confirm, as an operator would.
    stack.run([MUSHISHI, "firewall", "apply", "--no-wait", "--allow-ssh-lockout"])
    stack.run([MUSHISHI, "firewall", "confirm"])
    return stack


def test_prometheus_scrapes_every_daemon_and_answers_for_their_series(
        stack: Sandbox) -> None:
    answer = chat(stack, "private")
    assert answer["choices"][0]["message"]["content"] is not None
    config = (REPO / "docs" / "examples" / "prometheus.yml").read_text()
    stack.write(PROMETHEUS_CONFIG, config.replace("scrape_interval: 15s", "scrape_interval: 1s"))
    checked = stack.run(["/usr/bin/promtool", "check", "config", PROMETHEUS_CONFIG],
                        check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    stack.run(["systemd-run", "--unit=test-prometheus", "--property=StateDirectory=test-prom",
               "/usr/bin/prometheus", f"--config.file={PROMETHEUS_CONFIG}",
               "--storage.tsdb.path=/var/lib/test-prom", "--web.listen-address=127.0.0.1:9090"])
    try:
        wait_ready(stack)
        for job in EXPORTERS:
            [sample] = wait_query(stack, f'up{{job="{job}"}} == 1')
            assert sample["metric"]["job"] == job
        for daemon in ("router", "gpud", "cpu_floor", "egress"):
            wait_query(stack, f'mushishi_build_info{{daemon="{daemon}"}} == 1')
        [requests] = wait_query(stack, 'mushishi_router_requests_total{profile="private",'
                                       'backend="cpu",outcome="success"} >= 1')
        assert requests["metric"]["job"] == "mushishi-router"
        wait_query(stack, 'mushishi_router_sovereignty_layer{layer="config",state="ok"} == 1')
        wait_query(stack, 'mushishi_router_backend_state{backend="cpu",state="up"} == 1')
        wait_query(stack, 'mushishi_router_backend_state{backend="gpu",'
                          'state="mode_inactive"} == 1')
        wait_query(stack, 'mushishi_gpud_mode_active{mode="off"} == 1')
        [vram] = wait_query(stack, "mushishi_gpud_vram_total_bytes")
        assert float(vram["value"][1]) == 32607 * 1024 * 1024
        wait_query(stack, "mushishi_cpu_floor_up == 1")
        wait_query(stack, 'mushishi_router_request_duration_seconds_count{profile="private",'
                          'backend="cpu"} >= 1')
        wait_query(stack, 'mushishi_router_request_duration_seconds_bucket{profile="private",'
                          'le="+Inf"} >= 1')
        # The egress holds no key in this stack: its budgets and missing credentials show.
        wait_query(stack, 'mushishi_egress_budget_limit_requests{backend="kimi"} == 1000')
        wait_query(stack, 'mushishi_egress_credential_present{backend="kimi"} == 0')
    finally:
        stack.systemctl("stop", "test-prometheus.service", check=False)


def test_promtool_passes_every_exporter_and_textfile_and_the_docs_list_them_all(
        oneshots_ran: Sandbox) -> None:
    box = oneshots_ran
    outputs: dict[str, str] = {}
    for job, address in EXPORTERS.items():
        outputs[job] = curl(box, f"http://{address}/metrics")
    names = box.run(["ls", TEXTFILES]).stdout.split()
    assert sorted(names) == ["mushishi_backup.prom", "mushishi_backup_check.prom",
                             "mushishi_bench.prom", "mushishi_firewall.prom",
                             "mushishi_watchdog.prom"]
    for name in names:
        outputs[name] = box.run(["cat", f"{TEXTFILES}/{name}"]).stdout
    found: dict[str, str] = {}
    for source, text in outputs.items():
        lint = box.run(["/usr/bin/promtool", "check", "metrics"], input=text, check=False)
        assert lint.returncode == 0, f"{source}: {lint.stdout}{lint.stderr}"
        for family, kind in families(text).items():
            assert family.startswith("mushishi_"), f"{source}: {family}"
            assert (kind == "counter") == family.endswith("_total"), f"{source}: {family}"
            assert not re.search(r"_(milli|micro|kilo|mega|mib|kib|gib|percent|ms)(_|$)",
                                 family), f"{source}: {family} is not in base units"
            found[family] = kind
    documented = documented_metrics()
    assert set(documented) == set(found), (
        f"in docs/observability.md but not exported: {sorted(set(documented) - set(found))}; "
        f"exported but not documented: {sorted(set(found) - set(documented))}")
    for family, kind in found.items():
        assert documented[family] == kind, f"{family}: documented {documented[family]}"


def documented_metrics() -> dict[str, str]:
    """`| \\`name\\` | type | …` rows of docs/observability.md's metric tables."""
    text = (REPO / "docs" / "observability.md").read_text()
    return {match[1]: match[2] for match in
            re.finditer(r"^\| `(mushishi_[a-z0-9_]+)` \| (gauge|counter|histogram) \|", text,
                        re.MULTILINE)}


def test_status_json_with_one_daemon_stopped_names_it_and_shows_the_rest(
        stack: Sandbox) -> None:
    code, healthy = status_json(stack)
    assert healthy["unavailable"] == [], healthy["sources"]
    assert healthy["gpu"]["active_mode"] == "off"
    # Cloud budgets come from the real egress ledger (created when the egress started).
    assert healthy["sources"]["budgets"]["status"] == "ok"
    assert healthy["budgets"]["backends"]["kimi"]["requests_limit"] == 1000
    stack.systemctl("stop", "mushishi-gpud.service")
    try:
        code, report = status_json(stack)
        assert code == 1
        assert report["unavailable"] == ["gpud"]
        gpud = report["sources"]["gpud"]
        assert gpud["status"] == "down"
        assert "mushishi-gpud is not on the system bus" in gpud["detail"]
        assert report["gpu"] is None
        assert report["units"]["mushishi-gpud.service"]["active"] == "inactive"
        # The rest is still there.
        assert report["router"]["sovereignty"]["config"] is True
        assert report["router"]["profiles"]["private"]["would_use"] == "cpu"
        assert report["cpu_floor"]["serving"] is True
        assert report["units"]["mushishi-router.service"]["active"] == "active"
        assert "mushishi-watchdog.timer" in report["timers"]
        assert report["timers"]["mushishi-bench.timer"]["next"] is not None
        assert any(p.startswith("gpud: ") for p in report["problems"])
        screen = stack.run([MUSHISHI, "status"], check=False).stdout
        assert "not answering: gpud" in screen
        assert "serving nemotron-cpu-prism" in screen
    finally:
        stack.systemctl("start", "mushishi-gpud.service")
        stack.wait_for("mushishi-gpud.service", "active", timeout=60)
    deadline = time.monotonic() + 30
    while True:
        code, report = status_json(stack)
        if report["unavailable"] == [] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert report["unavailable"] == [] and report["gpu"]["active_mode"] == "off"


def test_status_with_the_router_stopped_says_so(stack: Sandbox) -> None:
    stack.systemctl("stop", "mushishi-router.socket", "mushishi-router.service")
    try:
        code, report = status_json(stack)
        assert code == 1 and report["unavailable"] == ["router"]
        assert "mushishi-router.socket" in report["sources"]["router"]["detail"]
        assert report["gpu"]["active_mode"] == "off" and report["cpu_floor"]["serving"]
    finally:
        stack.systemctl("start", "mushishi-router.socket", "mushishi-router.service")
        stack.wait_for("mushishi-router.service", "active", timeout=60)


def test_bench_unit_writes_the_csv_the_watchdog_and_status_read(oneshots_ran: Sandbox
                                                                 ) -> None:
    box = oneshots_ran
    shown = box.systemctl("show", "mushishi-bench.service", "-p", "Result", "-p", "User",
                          "-p", "IgnoreOnIsolate", "-p", "IPAddressDeny").stdout
    assert "Result=success" in shown and "User=mushishi" in shown
    assert "IgnoreOnIsolate=yes" in shown
    rows = box.run(["cat", "/var/lib/mushishi/bench/results.csv"]).stdout.splitlines()
    assert rows[0].startswith("time,target,prompt_tokens,completion_tokens,seconds,"
                              "tokens_per_s,gpu_power_w,gpu_temperature_c,regression")
    assert any(",backend:cpu," in row and ",20.0,40,false,cpu,off" in row for row in rows[1:])
    journal = box.journal("-u", "mushishi-bench.service", "-o", "cat")
    assert "skipped backend:gpu: GPU mode is off" in journal
    last = json.loads(box.run(["cat", "/var/lib/mushishi/watchdog/last.json"]).stdout)
    [bench] = [c for c in last["checks"] if c["name"] == "bench"]
    assert bench["status"] == "ok" and "backend:cpu" in bench["detail"]
    timer = box.systemctl("show", "mushishi-bench.timer", "-p", "TimersCalendar", "-p",
                          "Persistent", "-p", "ActiveState").stdout
    assert "OnCalendar=monthly" in timer or "*-*-01 00:00:00" in timer
    assert "Persistent=yes" in timer and "ActiveState=active" in timer
    _, report = status_json(box)
    assert report["bench"]["backend:cpu (cpu)"]["regression"] is False
    assert report["backup"]["last"]["outcome"] == "ok"
    assert report["backup"]["check"]["outcome"] == "ok"
    assert report["watchdog"]["checks"] > 0
    assert report["firewall"]["last"]["action"] == "confirmed"
