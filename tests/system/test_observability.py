"""Observability of the whole stack in a booted systemd: a real Prometheus scrapes the real
daemons and answers for their series through its HTTP API; Debian's node_exporter, set up as
docs/observability.md says, serves every oneshot's textfile (and reports a broken one), and
Prometheus scrapes them through it and evaluates the shipped rules on them; `promtool check
metrics` passes on every exporter's output and every oneshot's textfile; docs/observability.md
lists exactly the metrics that exist; `mushishi status --json` names a stopped daemon and
still shows the rest; the bench unit runs hardened and the watchdog reads what it wrote."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devtools.sandbox import Sandbox
from tests.observability_docs import (
    OBSERVABILITY,
    PROMETHEUS_CONFIG,
    RULES,
    node_exporter_defaults,
    node_exporter_flags,
)
from tests.system.stack import COPY_REPOSITORY, MUSHISHI, boot_stack, status_json

CONFIG_INSIDE = "/etc/mushishi-test/prometheus.yml"
PROMETHEUS = "http://127.0.0.1:9090"
TEXTFILES = "/var/lib/prometheus/node-exporter"
TEXTFILE_NAMES = ["mushishi_backup.prom", "mushishi_backup_check.prom", "mushishi_bench.prom",
                  "mushishi_firewall.prom", "mushishi_watchdog.prom"]
EXPORTERS = {"mushishi-router": "127.0.0.1:4000", "mushishi-gpud": "127.0.0.1:9642",
             "mushishi-cpu-floor": "127.0.0.1:9643", "mushishi-egress": "127.0.0.1:9641"}
NODE_EXPORTER_BINARY = Path("/usr/bin/prometheus-node-exporter")
NODE_EXPORTER_UNIT = "prometheus-node-exporter.service"  # Debian's own
NODE_EXPORTER = "http://127.0.0.1:9100/metrics"
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
def node_exporter(stack: Sandbox) -> Sandbox:
    """Debian's prometheus-node-exporter.service with docs/observability.md's
    /etc/default/prometheus-node-exporter (the sandbox masks the unit for every other test)."""
    if not NODE_EXPORTER_BINARY.exists():
        raise AssertionError(f"{NODE_EXPORTER_BINARY} is missing: `make test` installs it "
                             f"(scripts/install-system-deps.sh: apt install "
                             f"prometheus-node-exporter)")
    assert stack.systemctl("is-enabled", NODE_EXPORTER_UNIT, check=False
                           ).stdout.strip() == "masked"
    stack.write("/etc/default/prometheus-node-exporter", node_exporter_defaults())
    stack.systemctl("unmask", NODE_EXPORTER_UNIT)
    stack.systemctl("start", NODE_EXPORTER_UNIT)
    deadline = time.monotonic() + 30
    while stack.run(["curl", "-sS", "--fail", "--max-time", "2", NODE_EXPORTER],
                    check=False).returncode != 0:
        if time.monotonic() > deadline:
            journal = stack.journal("-u", NODE_EXPORTER_UNIT, "-o", "cat")
            raise AssertionError(f"node_exporter never answered:\n{journal[-3000:]}")
        time.sleep(0.2)
    return stack


@pytest.fixture(scope="module")
def prometheus(stack: Sandbox, node_exporter: Sandbox) -> Iterator[Sandbox]:
    """Debian's prometheus with docs/examples/prometheus.yml and its rules, every 1 s."""
    config = PROMETHEUS_CONFIG.read_text()
    for setting in ("scrape_interval", "evaluation_interval"):
        config = config.replace(f"{setting}: 15s", f"{setting}: 1s")
    stack.write(CONFIG_INSIDE, config)
    stack.write(str(Path(CONFIG_INSIDE).parent / RULES.name), RULES.read_text())
    checked = stack.run(["/usr/bin/promtool", "check", "config", CONFIG_INSIDE],
                        check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 1 rule files found" in checked.stdout, checked.stdout
    stack.run(["systemd-run", "--unit=test-prometheus", "--property=StateDirectory=test-prom",
               "/usr/bin/prometheus", f"--config.file={CONFIG_INSIDE}",
               "--storage.tsdb.path=/var/lib/test-prom", "--web.listen-address=127.0.0.1:9090"])
    try:
        wait_ready(stack)
        yield stack
    finally:
        stack.systemctl("stop", "test-prometheus.service", check=False)


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
        prometheus: Sandbox) -> None:
    stack = prometheus
    answer = chat(stack, "private")
    assert answer["choices"][0]["message"]["content"] is not None
    for job in [*EXPORTERS, "node"]:
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
    # The shipped recording rules are evaluated on what was scraped.
    wait_query(stack, 'profile_outcome:mushishi_router_requests:rate5m{profile="private",'
                      'outcome="success"}')


def test_promtool_passes_every_exporter_and_textfile_and_the_docs_list_them_all(
        oneshots_ran: Sandbox) -> None:
    box = oneshots_ran
    outputs: dict[str, str] = {}
    for job, address in EXPORTERS.items():
        outputs[job] = curl(box, f"http://{address}/metrics")
    names = box.run(["ls", TEXTFILES]).stdout.split()
    assert sorted(names) == TEXTFILE_NAMES
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
    text = OBSERVABILITY.read_text()
    return {match[1]: match[2] for match in
            re.finditer(r"^\| `(mushishi_[a-z0-9_]+)` \| (gauge|counter|histogram) \|", text,
                        re.MULTILINE)}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(name, labels) -> value of every `mushishi_` sample in a text exposition."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name.startswith("mushishi_")}


def test_node_exporter_serves_every_textfile_and_prometheus_scrapes_them_through_it(
        oneshots_ran: Sandbox, node_exporter: Sandbox, prometheus: Sandbox) -> None:
    box = oneshots_ran
    # The textfile directory of Debian's package (root:root 0755 in the image) keeps its
    # owner, gets group mushishi and 2775 from `mushishi install`: the watchdog (user
    # mushishi) and the bench (user mushishi-bench, group mushishi) wrote their files;
    # node_exporter (user prometheus) reads them.
    assert node_exporter_flags()["collector.textfile.directory"] == TEXTFILES
    assert box.run(["stat", "-c", "%U %G %a", TEXTFILES]).stdout.split() == [
        "root", "mushishi", "2775"]
    assert "User=prometheus" in box.systemctl("show", NODE_EXPORTER_UNIT, "-p", "User").stdout
    owners = box.run(["stat", "-c", "%n %U %a", *(f"{TEXTFILES}/{name}"
                                                   for name in TEXTFILE_NAMES)]).stdout
    assert f"{TEXTFILES}/mushishi_watchdog.prom mushishi 644" in owners, owners
    assert f"{TEXTFILES}/mushishi_bench.prom mushishi-bench 644" in owners, owners

    expected: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for name in TEXTFILE_NAMES:
        written = samples(box.run(["cat", f"{TEXTFILES}/{name}"]).stdout)
        assert written, f"{name} holds no sample"
        assert not set(written) & set(expected), f"{name} repeats a series of another file"
        expected.update(written)
    metrics = curl(box, NODE_EXPORTER)
    served = samples(metrics)
    missing = {series: value for series, value in expected.items()
               if served.get(series) != value}
    assert not missing, f"not served as written: {sorted(missing)[:10]}"
    assert re.search(r"^node_textfile_scrape_error 0$", metrics, re.MULTILINE), metrics[-2000:]
    for name in TEXTFILE_NAMES:
        assert f'node_textfile_mtime_seconds{{file="{TEXTFILES}/{name}"}}' in metrics
    # No series collected twice (node_exporter would log it and drop one on every scrape).
    assert re.search(r'^promhttp_metric_handler_errors_total\{cause="gathering"\} 0$', metrics,
                     re.MULTILINE), [line for line in metrics.splitlines() if "errors" in line]
    daemons = {dict(labels)["daemon"] for name, labels in served if name == "mushishi_build_info"}
    assert daemons == {"backup", "backup_check", "bench", "firewall", "watchdog"}

    # Prometheus holds exactly those series under job="node", and the rules ran on them.
    wait_query(box, 'up{job="node"} == 1')
    wait_query(box, 'node_textfile_scrape_error{job="node"} == 0')
    wait_query(box, f'count({{job="node",__name__=~"mushishi_.+"}}) == {len(expected)}')
    wait_query(box, 'mushishi_backup_outcome{job="node",outcome="ok"} == 1')
    wait_query(box, 'mushishi_backup_check_ok{job="node"} == 1')
    # The copy's series carry its repository and never repeat the primary's.
    wait_query(box, f'mushishi_backup_copy_outcome{{job="node",outcome="ok",'
                    f'repository="{COPY_REPOSITORY}"}} == 1')
    wait_query(box, f'mushishi_backup_check_copy_ok{{job="node",'
                    f'repository="{COPY_REPOSITORY}"}} == 1')
    wait_query(box, 'mushishi_watchdog_check_status{job="node",check="bench",status="ok"} == 1')
    [speed] = wait_query(box, 'mushishi_bench_tokens_per_second{job="node",'
                              'target="backend:cpu",backend="cpu"} > 0')
    assert float(speed["value"][1]) == expected[(
        "mushishi_bench_tokens_per_second",
        frozenset({("target", "backend:cpu"), ("backend", "cpu")}))]
    wait_query(box, 'mushishi_firewall_last_change_action{job="node",action="confirmed"} == 1')
    wait_query(box, 'mushishi:backup_last_success:age_seconds{job="node"} < 3600')
    wait_query(box, 'mushishi:watchdog_last_run:age_seconds{job="node"} < 3600')


def test_a_malformed_textfile_is_reported_not_ignored(oneshots_ran: Sandbox,
                                                      prometheus: Sandbox) -> None:
    box = oneshots_ran
    broken = f"{TEXTFILES}/zz-half-written.prom"
    # What a writer that did not rename into place could leave: a line cut in the middle.
    box.write(broken, '# TYPE mushishi_backup_outcome gauge\nmushishi_backup_outcome{outc')
    try:
        metrics = curl(box, NODE_EXPORTER)
        assert re.search(r"^node_textfile_scrape_error 1$", metrics, re.MULTILINE)
        # The good files are still served.
        assert ("mushishi_backup_outcome", frozenset({("outcome", "ok")})) in samples(metrics)
        deadline = time.monotonic() + 10
        while True:  # node_exporter names the file in its journal (on every scrape)
            journal = box.journal("-u", NODE_EXPORTER_UNIT, "-o", "cat")
            if re.search(r"failed to collect textfile data.*zz-half-written\.prom", journal):
                break
            assert time.monotonic() < deadline, journal[-3000:]
            time.sleep(0.5)
        wait_query(box, 'node_textfile_scrape_error{job="node"} == 1')
        # The shipped alert sees it (pending: it fires after 10 minutes, promtool proves that).
        wait_query(box, 'ALERTS{alertname="MushishiTextfileUnreadable",alertstate="pending"}')
    finally:
        box.run(["rm", "-f", broken])
    wait_query(box, 'node_textfile_scrape_error{job="node"} == 0')


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
    assert "Result=success" in shown and "User=mushishi-bench" in shown
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
