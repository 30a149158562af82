"""Config-time sovereignty: a sovereign chain may name only local backends, by address."""

from __future__ import annotations

from pathlib import Path

import pytest

from mushishi.shared.config import ConfigError, load_config
from mushishi.shared.config.router import check, unix_listen_path
from tests.unit.shared.config_issues import BACKENDS, config_issues

BASE = """
[router]
local_hosts = ["llm.tailnet.example"]
""" + BACKENDS + """
[backends.other]
url = "{url}"
model = "m"

[profiles.private]
tier = "{tier}"
chain = {chain}
"""


def issues_for(tmp_path: Path, *, url: str = "http://127.0.0.1:8000/v1", tier: str = "T1",
               chain: str = '["cpu", "other"]', extra: str = "") -> list[str]:
    return config_issues(tmp_path, BASE.format(url=url, tier=tier, chain=chain) + extra)


@pytest.mark.parametrize("url", [
    "http://10.0.0.5:8000/v1",
    "http://192.168.1.20:8000/v1",
    "http://[::ffff:8.8.8.8]:8000/v1",
    "http://localhost:8000/v1",
    "http://2130706433:8000/v1",
    "https://api.example.com/v1",
])
@pytest.mark.parametrize("tier", ["T1", "T1-strict"])
def test_sovereign_chain_with_non_local_backend_is_rejected_naming_profile_and_backend(
    tmp_path: Path, url: str, tier: str
) -> None:
    found = issues_for(tmp_path, url=url, tier=tier)
    assert len(found) == 1, found
    assert found[0].startswith(f"profiles.private.chain[1]: {tier} profile 'private' may only "
                               "use local backends, but backend 'other' is not local")


@pytest.mark.parametrize("url", [
    "http://127.0.0.1@evil.example.com/v1",
    "http://evil.example.com#@127.0.0.1/v1",
])
def test_userinfo_and_fragment_tricks_are_rejected_at_the_url_and_in_the_chain(
    tmp_path: Path, url: str
) -> None:
    found = issues_for(tmp_path, url=url)
    assert any(issue.startswith("backends.other.url:") for issue in found), found
    assert any(issue.startswith("profiles.private.chain[1]:") for issue in found), found


def test_sovereign_chain_of_local_backends_is_accepted(tmp_path: Path) -> None:
    assert issues_for(tmp_path, url="http://[::1]:8000/v1") == []
    assert issues_for(tmp_path, url="http://100.101.102.103:8000/v1") == []
    assert issues_for(tmp_path, url="unix:/run/vllm.sock") == []


def test_t2_chain_starting_with_cloud_is_rejected(tmp_path: Path) -> None:
    found = issues_for(tmp_path, tier="T2", chain='["cloud", "cpu"]')
    assert found == ["profiles.private.chain[0]: T2 profile 'private' must start with a local "
                     "backend, but backend 'cloud' is cloud (hostname 'api.example.com' is not "
                     "listed in router.local_hosts); use T3 for cloud-first"]


def test_t2_local_first_then_cloud_and_t3_cloud_first_are_accepted(tmp_path: Path) -> None:
    assert issues_for(tmp_path, tier="T2", chain='["cpu", "cloud"]') == []
    assert issues_for(tmp_path, tier="T3", chain='["cloud", "cpu"]') == []


def test_chain_naming_an_unknown_backend_is_rejected(tmp_path: Path) -> None:
    found = issues_for(tmp_path, chain='["cpu", "gpuu"]')
    assert found == ["profiles.private.chain[1]: unknown backend 'gpuu' "
                     "(backends: cloud, cpu, other)"]


def test_api_key_on_a_local_backend_is_rejected(tmp_path: Path) -> None:
    found = issues_for(tmp_path, extra='\n[backends.bad]\nurl = "http://127.0.0.1:9/v1"\n'
                                       'model = "x"\napi_key_credential = "k"\n')
    assert any(issue.startswith("backends.bad.api_key_credential:") for issue in found), found


def test_unix_peers_must_name_real_users_and_profiles(tmp_path: Path) -> None:
    text = BASE.format(url="http://127.0.0.1:8000/v1", tier="T1", chain='["cpu"]')
    text = text.replace('local_hosts = ["llm.tailnet.example"]',
                        'local_hosts = ["llm.tailnet.example"]\nunix_peers = '
                        '{ "no-such-user-xyz" = ["private"], "0" = ["nope"], '
                        '"root" = ["private"] }')
    path = tmp_path / "mushishi.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    found = [str(issue) for issue in caught.value.issues]
    assert found == [
        "router.unix_peers.no-such-user-xyz: no such user 'no-such-user-xyz' (give a user "
        "name or a numeric uid)",
        "router.unix_peers.0[0]: unknown profile 'nope'",
    ]


def test_listed_hostname_resolving_to_a_public_address_is_rejected_for_t1(
    tmp_path: Path,
) -> None:
    path = tmp_path / "mushishi.toml"
    path.write_text(BASE.format(url="http://llm.tailnet.example:8000/v1", tier="T1",
                                chain='["cpu", "other"]'))
    settings = load_config(path).settings  # resolution fails here: listed, checked later
    found = [str(i) for i in check(settings, resolve=lambda host: ["100.64.0.9",
                                                                   "198.51.100.7"])]
    assert found == ["profiles.private.chain[1]: T1 profile 'private' may only use local "
                     "backends, but backend 'other' is not local: hostname "
                     "'llm.tailnet.example' resolves to 198.51.100.7, outside "
                     "router.local_networks"]
    assert check(settings, resolve=lambda host: ["100.64.0.9"]) == []


def test_example_config_passes_every_locality_check() -> None:
    from tests.paths import EXAMPLE_CONFIG

    load_config(EXAMPLE_CONFIG)


@pytest.mark.parametrize(("listen", "path"), [
    (["127.0.0.1:4000", "unix:/run/mushishi/router.sock"], "/run/mushishi/router.sock"),
    (["unix:/a.sock", "unix:/b.sock"], "/a.sock"),
    (["127.0.0.1:4000", "[::1]:4000"], None),
    ([], None),
])
def test_unix_listen_path_first_unix_address_or_none(listen: list[str], path: str | None
                                                     ) -> None:
    assert unix_listen_path(listen) == path


@pytest.mark.parametrize("network", ["0.0.0.0/0", "::/0", "8.8.8.0/24", "64:ff9b::/96",
                                     "100.0.0.0/8", "2001:db8::/32"])
def test_local_networks_may_not_include_public_space(tmp_path: Path, network: str) -> None:
    """IPAddressAllow= is rendered from the same list: one public range would open the
    kernel layer and the connect-time check alike."""
    text = f'[router]\nlocal_networks = ["127.0.0.0/8", "{network}"]\n' + BACKENDS
    found = config_issues(tmp_path, text)
    assert len(found) == 1, found
    assert found[0].startswith("router.local_networks"), found
    assert f"{network} is not inside loopback, private" in found[0]


def test_local_networks_may_be_any_private_loopback_link_local_or_tailnet_range(
    tmp_path: Path,
) -> None:
    networks = ["127.0.0.0/8", "::1/128", "100.64.0.0/10", "10.20.0.0/16", "192.168.1.0/24",
                "172.16.0.0/12", "fd7a:115c:a1e0::/48", "fe80::/64", "169.254.0.0/16"]
    text = f"[router]\nlocal_networks = {networks!r}\n".replace("'", '"') + BACKENDS
    assert config_issues(tmp_path, text) == []


def test_local_networks_from_the_environment_are_checked_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MUSHISHI_ROUTER__LOCAL_NETWORKS", '["127.0.0.0/8", "0.0.0.0/0"]')
    found = config_issues(tmp_path, BACKENDS)
    assert any("0.0.0.0/0 is not inside loopback" in issue for issue in found), found


@pytest.mark.parametrize("probe", ["255.255.255.255:9", "224.0.0.1:9", "127.0.0.1:9",
                                   "100.64.0.1:9", "0.0.0.0:9", "[::1]:9", "[ff02::1]:9"])
def test_confinement_probe_must_be_a_unicast_address_the_router_may_not_reach(
    tmp_path: Path, probe: str,
) -> None:
    """A broadcast probe failed with EACCES and a local one is reachable by design: neither
    says anything about IPAddressDeny=."""
    found = config_issues(tmp_path, f'[router]\nconfinement_probe = "{probe}"\n' + BACKENDS)
    assert len(found) == 1 and found[0].startswith("router.confinement_probe"), found
    assert "must be a unicast address outside router.local_networks" in found[0]


def test_the_default_confinement_probe_and_another_non_local_one_are_accepted(
    tmp_path: Path,
) -> None:
    assert config_issues(tmp_path, BACKENDS) == []
    assert config_issues(tmp_path, '[router]\nconfinement_probe = "[2001:db8::1]:9"\n'
                         + BACKENDS) == []


def test_a_backend_at_the_egress_socket_is_refused(tmp_path: Path) -> None:
    found = issues_for(tmp_path, url="unix:/run/mushishi/egress.sock")
    assert any(issue.startswith("backends.other.url: unix:/run/mushishi/egress.sock is "
                                "router.egress_socket") for issue in found), found
    assert any(issue.startswith("profiles.private.chain[1]:") for issue in found), found


@pytest.mark.parametrize("section", ["cpu_floor", "gpu", "router"])
@pytest.mark.parametrize("value", ["9642", "localhost:", "unix:/run/m.sock", "[::1]:70000"])
def test_every_metrics_listen_is_checked_as_host_port(
    tmp_path: Path, section: str, value: str,
) -> None:
    """One parser (parse_tcp_listen) for every daemon's metrics_listen; gpud's had none."""
    found = config_issues(tmp_path, f'[{section}]\nmetrics_listen = "{value}"\n' + BACKENDS)
    assert any(issue.startswith(f"{section}.metrics_listen") for issue in found), found


@pytest.mark.parametrize("url", ["unix:/var/run/mushishi/egress.sock",
                                 "unix:/run//mushishi/egress.sock",
                                 "unix:/proc/self/root/run/mushishi/egress.sock"])
def test_a_backend_at_the_egress_socket_under_another_spelling_is_refused(
        tmp_path: Path, url: str) -> None:
    found = issues_for(tmp_path, url=url)
    assert any(issue.startswith(f"backends.other.url: {url} is router.egress_socket")
               for issue in found), found


@pytest.mark.parametrize("url", ["unix:/run/mushishi/router.sock",
                                 "unix:/var/run/mushishi/./router.sock"])
def test_a_backend_at_the_routers_own_socket_is_refused(tmp_path: Path, url: str) -> None:
    found = issues_for(tmp_path, url=url, extra="")
    assert any(issue.startswith(f"backends.other.url: {url} is the router's own socket")
               for issue in found), found
    assert any(issue.startswith("profiles.private.chain[1]:") for issue in found), found


PEERS = BACKENDS + """
[profiles.private]
tier = "T1"
chain = ["cpu"]

[profiles.personal]
tier = "T2"
chain = ["cpu", "cloud"]

[router]
unix_peers = {peers}
"""


@pytest.mark.parametrize(("peers", "issue"), [
    ('{ mushishi = ["private", "personal"] }',
     "router.unix_peers.mushishi[1]: user mushishi runs the units that read T1 prompts"),
    ('{ root = ["personal"] }',
     "router.unix_peers.root[0]: user root runs the units that read T1 prompts"),
    ('{ "0" = ["personal"] }',
     "router.unix_peers.0[0]: user root runs the units that read T1 prompts"),
])
def test_a_user_of_the_units_that_read_t1_prompts_may_be_mapped_only_to_sovereign_profiles(
        tmp_path: Path, peers: str, issue: str) -> None:
    found = config_issues(tmp_path, PEERS.format(peers=peers))
    assert len(found) == 1 and found[0].startswith(issue), found
    assert "'personal' (T2)" in found[0] and "mushishi-bench" in found[0], found


@pytest.mark.parametrize("peers", ['{ mushishi = ["private"] }',
                                   '{ mushishi-bench = ["private", "personal"] }'])
def test_sovereign_mappings_and_the_bench_user_are_accepted(tmp_path: Path, peers: str) -> None:
    # mushishi-bench is created by `mushishi install`: accepted before it exists.
    assert config_issues(tmp_path, PEERS.format(peers=peers)) == []


MEDIA = BACKENDS + """
[profiles.private]
tier = "{tier}"
chain = ["cpu"]
local_media_prefixes = [{prefix}]
"""


@pytest.mark.parametrize(("tier", "prefix", "issue"), [
    ("T1", '"http://127.0.0.1:8090/media/"', None),
    ("T1-strict", '"http://llm.tailnet.example:8090/"', None),
    ("T1", '"https://media.example.com/"', "must be local: hostname 'media.example.com' is "
                                           "not listed in router.local_hosts"),
    ("T1", '"http://203.0.113.7/"', "must be local: 203.0.113.7 is outside"),
    ("T1", '"http://127.0.0.1:8090"', "must be an http(s) URL ending with `/`"),
    ("T1", '"unix:/run/media.sock"', "must be an http(s) URL ending with `/`"),
    ("T1", '"http://user@127.0.0.1/"', "carries userinfo"),
    ("T2", '"http://127.0.0.1:8090/media/"', "only T1 and T1-strict profiles check media"),
])
def test_local_media_prefixes_are_checked_like_backends(
        tmp_path: Path, tier: str, prefix: str, issue: str | None) -> None:
    text = MEDIA.format(tier=tier, prefix=prefix).replace(
        "[backends.cpu]", '[router]\nlocal_hosts = ["llm.tailnet.example"]\n\n[backends.cpu]')
    found = config_issues(tmp_path, text)
    if issue is None:
        assert found == []
    else:
        assert len(found) == 1 and found[0].startswith(
            "profiles.private.local_media_prefixes[0]: ") and issue in found[0], found


@pytest.mark.parametrize(("endpoints", "expected"), [
    ('["audio/x"]', "backends.other.endpoints[0]: Input should be 'chat/completions'"),
    ('["rerank", "rerank"]', "backends.other.endpoints: Value error, rerank listed more than "
                             "once"),
    ("[]", "backends.other.endpoints: List should have at least 1 item"),
])
def test_backend_endpoints_must_be_known_names_each_once(tmp_path: Path, endpoints: str,
                                                         expected: str) -> None:
    text = BASE.format(url="http://127.0.0.1:9000/v1", tier="T1", chain='["cpu", "other"]')
    found = config_issues(tmp_path, text.replace('model = "m"\n',
                                                 f'model = "m"\nendpoints = {endpoints}\n'))
    assert len(found) == 1 and found[0].startswith(expected), found


def test_backend_endpoints_default_to_what_a_chat_model_server_serves(tmp_path: Path) -> None:
    path = tmp_path / "mushishi.toml"
    path.write_text(BASE.format(url="http://127.0.0.1:9000/v1", tier="T1",
                                chain='["cpu", "other"]').replace(
        'model = "m"\n', 'model = "m"\nendpoints = ["audio/transcriptions", "rerank"]\n'))
    backends = load_config(path).settings.backends
    assert backends["cpu"].endpoints == ["chat/completions", "completions", "embeddings"]
    assert backends["other"].endpoints == ["audio/transcriptions", "rerank"]


def test_a_cloud_backend_may_not_list_responses(tmp_path: Path) -> None:
    issues = config_issues(tmp_path, """
[backends.cloud]
url = "https://api.example.com/v1"
model = "big"
api_key_credential = "cloud-key"
endpoints = ["chat/completions", "responses"]

[profiles.cloudy]
tier = "T3"
chain = ["cloud"]
""")
    assert any(issue.startswith("backends.cloud.endpoints: cloud backend 'cloud' cannot list")
               for issue in issues), issues
