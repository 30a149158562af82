"""Config keys of mushishi-egress: cloud-only keys, prices for cost budgets, allowed peers."""

from __future__ import annotations

from pathlib import Path

import pytest

from mushishi.shared.config import load_config
from tests.unit.shared.config_issues import BACKENDS, config_issues


def issues_for(tmp_path: Path, extra: str) -> list[str]:
    return config_issues(tmp_path, BACKENDS + extra)


@pytest.mark.parametrize("line", [
    "budget = { requests_per_day = 5 }",
    "cooldown_after_failures = 2",
    "cooldown_s = 10",
    "connect_timeout_s = 3",
    "price = { prompt_per_million = 1, completion_per_million = 2 }",
    'extra_body = { provider = { zdr = true } }',
    'extra_headers = { "X-Title" = "t" }',
])
def test_cloud_only_keys_on_a_local_backend_are_errors_naming_the_key(
    tmp_path: Path, line: str,
) -> None:
    key = line.split(" ", 1)[0]
    found = issues_for(tmp_path, "\n[backends.cpu2]\nurl = \"http://127.0.0.1:8002/v1\"\n"
                                 f"model = \"c\"\n{line}\n")
    assert len(found) == 1, found
    assert found[0].startswith(f"backends.cpu2.{key}: backend 'cpu2' is local"), found
    assert "never cooled down" in found[0]


def test_the_same_keys_on_a_cloud_backend_are_accepted(tmp_path: Path) -> None:
    extra = ('budget = { requests_per_day = 5, tokens_per_day = 9, cost_per_day = 1.5 }\n'
             "cooldown_after_failures = 2\ncooldown_s = 10\nconnect_timeout_s = 3\n"
             "price = { prompt_per_million = 1, completion_per_million = 2 }\n"
             'extra_body = { provider = { zdr = true } }\nextra_headers = { "X-Title" = "t" }\n'
             "stream_usage = false\n")
    path = tmp_path / "mushishi.toml"
    path.write_text(BACKENDS + extra)
    backend = load_config(path).settings.backends["cloud"]
    assert backend.price is not None and backend.price.completion_per_million == 2
    assert backend.extra_body == {"provider": {"zdr": True}}


def test_a_cost_budget_needs_a_price(tmp_path: Path) -> None:
    found = issues_for(tmp_path, "budget = { cost_per_day = 2 }\n")
    assert found == ["backends.cloud.budget.cost_per_day: needs backends.cloud.price to count "
                     "spend"]


@pytest.mark.parametrize(("line", "message"), [
    ('extra_headers = { Authorization = "Bearer x" }', "set by mushishi-egress itself"),
    ('extra_headers = { "X-A" = "a\\r\\nb" }', "line break"),
    ('extra_body = { model = "other" }', "not from extra_body"),
    ('extra_body = { stream = true }', "not from extra_body"),
])
def test_extra_headers_and_body_cannot_replace_what_the_egress_sets(
    tmp_path: Path, line: str, message: str,
) -> None:
    found = issues_for(tmp_path, line + "\n")
    assert len(found) == 1 and message in found[0], found


def test_allowed_peers_must_exist_when_set_and_default_to_the_mushishi_user(
    tmp_path: Path,
) -> None:
    path = tmp_path / "mushishi.toml"
    path.write_text(BACKENDS)
    assert load_config(path).settings.egress.allowed_peers == ["mushishi"]
    found = issues_for(tmp_path, '\n[egress]\nallowed_peers = ["no-such-user-xyz", "0"]\n')
    assert found == ["egress.allowed_peers[0]: no such user 'no-such-user-xyz' (give a user "
                     "name or a numeric uid)"]
    assert issues_for(tmp_path, "\n[egress]\nallowed_peers = []\n") == [
        "egress.allowed_peers: must name at least the router's user (mushishi)"]


def test_metrics_listen_must_be_host_and_port(tmp_path: Path) -> None:
    found = issues_for(tmp_path, '\n[egress]\nmetrics_listen = "unix:/run/x.sock"\n')
    assert len(found) == 1 and found[0].startswith("egress.metrics_listen"), found
