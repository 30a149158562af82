"""What docs/observability.md gives an operator to copy is held to the tools that read it.

* The Netdata go.d job file: every key against the options go.d's `prometheus` collector and
  job manager read (tests/assets/go_d_prometheus_options.yaml, derived from Netdata's source:
  it names the release and commit), since go.d silently ignores any other key. Netdata with
  go.d is not installed here (Debian's netdata has no go.d plugin), so the schema is the
  check; a second test feeds it wrong keys to show it fails.
* The Prometheus rules and scrape config: `promtool check` and `promtool test rules`, every
  alert and recorded series tested and listed in the docs.
* The node_exporter `ARGS` line: flags the installed node_exporter knows, pointing at the
  directory the config writes textfiles to (tests/system/test_observability.py runs it).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from mushishi.shared.config.loader import load_settings
from tests.observability_docs import (
    OBSERVABILITY,
    PROMETHEUS_CONFIG,
    RULES,
    go_d_job_file,
    node_exporter_flags,
)
from tests.paths import EXAMPLE_CONFIG, REPO

GO_D_OPTIONS = REPO / "tests" / "assets" / "go_d_prometheus_options.yaml"
RULES_TEST = REPO / "tests" / "assets" / "mushishi-rules.test.yml"
PROMTOOL = Path("/usr/bin/promtool")
NODE_EXPORTER = Path("/usr/bin/prometheus-node-exporter")

SCALARS = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "duration": (int, float, str),  # seconds, or a Go duration string ("10s")
}


def go_d_options() -> dict[str, Any]:
    return yaml.safe_load(GO_D_OPTIONS.read_text())


def go_d_problems(document: Any, options: dict[str, Any]) -> list[str]:
    """Every key of a go.d/prometheus.conf document go.d would not read, every value of the
    wrong kind, and every job without a required key; [] when go.d reads it all."""
    problems: list[str] = []
    _check(document, options["file"], "", problems)
    jobs = document.get("jobs") if isinstance(document, dict) else None
    for index, job in enumerate(jobs if isinstance(jobs, list) else []):
        for key in options["required_job_keys"]:
            if not isinstance(job, dict) or key not in job:
                problems.append(f"jobs[{index}]: no `{key}` (go.d requires it)")
    return problems


def _check(value: Any, schema: Any, path: str, problems: list[str]) -> None:
    where = path or "the file"
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            problems.append(f"{where}: a mapping expected, got {value!r}")
            return
        for key, item in value.items():
            if key not in schema:
                problems.append(f"{path + '.' if path else ''}{key}: not an option of go.d's "
                                f"prometheus collector (go.d ignores it)")
            else:
                _check(item, schema[key], f"{path + '.' if path else ''}{key}", problems)
    elif isinstance(schema, list):
        if not isinstance(value, list):
            problems.append(f"{where}: a list expected, got {value!r}")
            return
        for index, item in enumerate(value):
            _check(item, schema[0], f"{path}[{index}]", problems)
    elif schema == "strings":
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            problems.append(f"{where}: a list of strings expected, got {value!r}")
    elif schema == "map":
        if not isinstance(value, dict):
            problems.append(f"{where}: a mapping expected, got {value!r}")
    else:
        kinds = SCALARS[schema]
        if isinstance(value, bool) != (schema == "boolean") or not isinstance(value, kinds):
            problems.append(f"{where}: {schema} expected, got {value!r}")


def test_the_option_list_names_where_it_came_from() -> None:
    source = go_d_options()["source"]
    assert source["repository"] == "https://github.com/netdata/netdata"
    assert re.fullmatch(r"v\d+\.\d+\.\d+", source["release"])
    assert re.fullmatch(r"[0-9a-f]{40}", source["commit"])


def test_the_documented_go_d_job_file_uses_only_options_go_d_reads() -> None:
    document = yaml.safe_load(go_d_job_file())
    assert go_d_problems(document, go_d_options()) == []
    names = [job["name"] for job in document["jobs"]]
    assert len(names) == len(set(names)), f"duplicate job names: {names}"
    # go.d turns spaces, dots and colons of a job name into `_`: keep the printed names.
    assert all(re.fullmatch(r"[a-z0-9_]+", name) for name in names), names
    # Netdata reads the same endpoints as the Prometheus example scrapes.
    scraped = {target for job in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
               for group in job["static_configs"] for target in group["targets"]}
    assert {urlsplit(job["url"]).netloc for job in document["jobs"]} == scraped
    assert all(urlsplit(job["url"]).path == "/metrics" for job in document["jobs"])


def test_a_key_go_d_would_ignore_fails_the_check() -> None:
    options = go_d_options()
    # The documented file with one typo: the check that passes on it must fail on this.
    misspelt = go_d_job_file().replace("    selector:\n", "    selectors:\n")
    assert misspelt != go_d_job_file()
    assert go_d_problems(yaml.safe_load(misspelt), options) == [
        "jobs[4].selectors: not an option of go.d's prometheus collector (go.d ignores it)"]
    wrong = {
        "job": [],  # `jobs`
        "update_every": 5,
        "jobs": [
            {"name": "a", "url": "http://127.0.0.1:4000/metrics", "interval": 5,
             "selector": {"alow": ["mushishi_*"]}, "update_every": "5s",
             "insecure_skip_verify": True},  # go.d.plugin's old name; now tls_skip_verify
            {"name": "b", "timeout": "2s", "headers": {"X-Any": "y"},
             "fallback_type": {"gauge": "mushishi_*"}},
        ],
    }
    assert go_d_problems(wrong, options) == [
        "job: not an option of go.d's prometheus collector (go.d ignores it)",
        "jobs[0].interval: not an option of go.d's prometheus collector (go.d ignores it)",
        "jobs[0].selector.alow: not an option of go.d's prometheus collector (go.d ignores it)",
        "jobs[0].update_every: integer expected, got '5s'",
        "jobs[0].insecure_skip_verify: not an option of go.d's prometheus collector "
        "(go.d ignores it)",
        "jobs[1].fallback_type.gauge: a list of strings expected, got 'mushishi_*'",
        "jobs[1]: no `url` (go.d requires it)",
    ]


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    if not PROMTOOL.exists():
        raise AssertionError(f"{PROMTOOL} is missing: `make test` installs it "
                             f"(scripts/install-system-deps.sh: apt install prometheus)")
    return subprocess.run([str(PROMTOOL), *map(str, args)], capture_output=True, text=True,
                          timeout=60, check=False)


def test_promtool_passes_the_shipped_rules_config_and_rule_tests() -> None:
    for args in (("check", "rules", RULES), ("check", "config", PROMETHEUS_CONFIG),
                 ("test", "rules", RULES_TEST)):
        result = promtool(*args)
        assert result.returncode == 0, f"promtool {args}: {result.stdout}{result.stderr}"
    # The example config loads the rules file that was just checked.
    assert "SUCCESS: 1 rule files found" in promtool("check", "config", PROMETHEUS_CONFIG).stdout


def test_every_rule_is_tested_and_listed_in_the_docs() -> None:
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"]
             for rule in group["rules"]]
    alerts = {rule["alert"] for rule in rules if "alert" in rule}
    recorded = {rule["record"] for rule in rules if "record" in rule}
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])
             if case["exp_alerts"]}
    quiet = {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])
             if not case["exp_alerts"]}
    evaluated = {case["expr"] for test in tests for case in test.get("promql_expr_test", [])}
    assert fired == alerts and quiet == alerts, (alerts - fired, alerts - quiet)
    assert evaluated == recorded, recorded - evaluated
    doc = OBSERVABILITY.read_text()
    listed = set(re.findall(r"^\| `([A-Za-z_:0-9]+)` \|", doc, re.MULTILINE))
    assert alerts | recorded <= listed, (alerts | recorded) - listed


def test_node_exporter_args_are_real_flags_reading_the_configured_textfile_dir() -> None:
    if not NODE_EXPORTER.exists():
        raise AssertionError(f"{NODE_EXPORTER} is missing: `make test` installs it "
                             f"(scripts/install-system-deps.sh: apt install "
                             f"prometheus-node-exporter)")
    known = subprocess.run([str(NODE_EXPORTER), "--help"], capture_output=True, text=True,
                           timeout=30, check=False)
    flags = node_exporter_flags()
    for flag in flags:
        assert f"--{flag}=" in known.stdout + known.stderr, f"node_exporter has no --{flag}"
    settings = load_settings(EXAMPLE_CONFIG)
    directories = {settings.backup.textfile_dir, settings.watchdog.textfile_dir,
                   settings.bench.textfile_dir, settings.firewall.textfile_dir}
    assert directories == {flags["collector.textfile.directory"]}
    node = [job for job in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
            if job["job_name"] == "node"]
    assert node[0]["static_configs"][0]["targets"] == [flags["web.listen-address"]]
