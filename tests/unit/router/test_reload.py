"""What a reload may apply live, and what only a restart can: a table of config changes."""

from __future__ import annotations

import hashlib

import pytest

from mushishi.services.router.core import compile_table
from mushishi.services.router.reload import ReloadStatus, needs_restart
from mushishi.shared.config.settings import MushishiSettings

BASE = {
    "router": {"listen": ["127.0.0.1:4000"], "unix_peers": {"0": ["private"]}},
    "backends": {"gpu": {"url": "http://127.0.0.1:8000/v1", "model": "gpu-model"},
                 "kimi": {"url": "https://api.example/v1", "model": "k"}},
    "profiles": {"private": {"tier": "T1", "chain": ["gpu"]},
                 "research": {"tier": "T2", "chain": ["gpu", "kimi"]}},
    "keys": {hashlib.sha256(b"k").hexdigest(): ["private"]},
}


def settings(**changes: dict) -> MushishiSettings:
    data = {key: dict(value) for key, value in BASE.items()}
    for section, values in changes.items():
        data[section] = {**data.get(section, {}), **values}
    return MushishiSettings(**data)


@pytest.mark.parametrize(("changes", "pending"), [
    ({}, []),
    ({"keys": {hashlib.sha256(b"new").hexdigest(): ["research"]}}, []),
    ({"router": {"unix_peers": {"0": ["private", "research"]}}}, []),
    ({"profiles": {"research": {"tier": "T1", "chain": ["gpu"]}}}, []),
    ({"profiles": {"other": {"tier": "T3", "chain": ["kimi"]}}}, []),
    ({"router": {"listen": ["127.0.0.1:4001"]}}, ["router.listen"]),
    ({"router": {"first_byte_timeout_s": 10}}, ["router.first_byte_timeout_s"]),
    ({"router": {"egress_socket": "/run/elsewhere.sock"}}, ["router.egress_socket"]),
    ({"backends": {"gpu": {"url": "http://127.0.0.1:8001/v1", "model": "gpu-model"}}},
     ["backends.gpu"]),
    ({"backends": {"cpu": {"url": "http://127.0.0.1:8002/v1", "model": "c"}}},
     ["backends.cpu"]),
    ({"traces": {"endpoint": "http://127.0.0.1:4318/v1/traces"}}, ["traces"]),
    ({"egress": {"cooldown_s": 5}}, []),  # not the router's
])
def test_a_reload_applies_keys_peers_and_profiles_and_names_the_rest(
        changes: dict, pending: list[str]) -> None:
    assert needs_restart(settings(), settings(**changes)) == pending


def test_a_reloaded_table_chains_the_running_hops() -> None:
    running = compile_table(settings(), lambda user: 0)
    fresh = compile_table(settings(profiles={"research": {"tier": "T1", "chain": ["gpu"]}}),
                          lambda user: 0, running=running.backends)
    assert fresh.profiles["research"].tier == "T1"
    assert fresh.profiles["research"].hops[0] is running.backends["gpu"]


def test_the_reload_status_names_what_waits_for_a_restart() -> None:
    status = ReloadStatus()
    assert status.as_json()["pending_restart"] == []
    line = status.refused(0.0, ["backends.gpu", "router.listen"], "/etc/mushishi/mushishi.toml")
    assert status.as_json()["pending_restart"] == ["backends.gpu", "router.listen"]
    assert "1970-01-01T00:00:00+00:00" in line and "backends.gpu, router.listen" in line
    assert "systemctl restart mushishi-router" in line
    status.applied(60.0)
    assert status.as_json()["pending_restart"] == []
