"""`[bench]` and `[traces]`: targets name real, local things; traces stay on the box; the
watchdog reads the file the bench writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.shared.config_issues import BACKENDS, config_issues

BASE = BACKENDS + """
[profiles.private]
tier = "T1"
chain = ["cpu"]
"""


def issues(tmp_path: Path, extra: str) -> list[str]:
    return config_issues(tmp_path, BASE + extra)


def test_valid_bench_and_traces_pass(tmp_path: Path) -> None:
    assert issues(tmp_path, """
[bench]
targets = ["profile:private", "backend:cpu"]
[traces]
endpoint = "http://127.0.0.1:6006/v1/traces"
""") == []


@pytest.mark.parametrize(("extra", "expected"), [
    ('[bench]\ntargets = ["private"]',
     "bench.targets: Value error, 'private' is not a bench target: write profile:NAME"),
    ('[bench]\ntargets = ["profile:nope"]',
     "bench.targets[0]: unknown profile 'nope' (profiles: private)"),
    ('[bench]\ntargets = ["backend:nope"]',
     "bench.targets[0]: unknown backend 'nope' (backends: cloud, cpu)"),
    ('[bench]\ntargets = ["backend:cloud"]',
     "bench.targets[0]: backend 'cloud' is not local (hostname 'api.example.com' is not "
     "listed in router.local_hosts): bench a cloud backend through a T2/T3 profile"),
    ('[bench]\nresults = "/srv/bench.csv"',
     "bench.results: /srv/bench.csv is not watchdog.bench_results "
     "(/var/lib/mushishi/bench/results.csv): the watchdog would never see a regression"),
    ('[traces]\nendpoint = "https://phoenix.example.com/v1/traces"',
     "traces.endpoint: hostname 'phoenix.example.com' is not listed in router.local_hosts: "
     "traces must stay on the box or the tailnet"),
    ('[traces]\nendpoint = "http://10.0.0.5:6006/v1/traces"',
     "traces.endpoint: 10.0.0.5 is outside router.local_networks"),
    ('[traces]\nendpoint = "http://user@127.0.0.1:6006/v1/traces"',
     "traces.endpoint: 'http://user@127.0.0.1:6006/v1/traces' carries userinfo"),
    ('[traces]\nsample_ratio = 2', "traces.sample_ratio: Input should be less than or equal"),
])
def test_bad_bench_and_traces_keys_are_named(tmp_path: Path, extra: str, expected: str) -> None:
    found = issues(tmp_path, extra)
    assert any(expected in issue for issue in found), found


def test_a_listed_traces_hostname_is_resolved_like_a_local_backend(tmp_path: Path) -> None:
    """Listed in local_hosts is not enough: `localhost` resolves to 127.0.0.1, outside
    these local_networks, so the spans (T1 metadata) would leave them."""
    text = ('[router]\nlocal_networks = ["100.64.0.0/10"]\nlocal_hosts = ["localhost"]\n'
            + BACKENDS + '\n[traces]\nendpoint = "http://localhost:6006/v1/traces"\n')
    found = config_issues(tmp_path, text)
    assert any(issue.startswith("traces.endpoint:") and "resolves to" in issue
               and "outside router.local_networks" in issue for issue in found), found


def test_a_bench_target_backend_must_serve_chat_completions(tmp_path: Path) -> None:
    found = config_issues(tmp_path, """
[backends.whisper]
url = "http://127.0.0.1:9000/v1"
model = "whisper"
endpoints = ["audio/transcriptions"]

[profiles.voice]
tier = "T1"
chain = ["whisper"]

[bench]
targets = ["backend:whisper"]
""")
    assert found == ["bench.targets[0]: backend 'whisper' does not serve chat/completions "
                     "(backends.whisper.endpoints): the bench times chat completions"]
