"""Config checks of [modes] and [tenants]: ports, busy probes."""

from __future__ import annotations

from pathlib import Path

import pytest

from mushishi.shared.config import ConfigError, load_config, load_settings
from tests.paths import EXAMPLE_CONFIG


def load_with(tmp_path: Path, extra: str, replace: tuple[str, str] | None = None) -> None:
    text = EXAMPLE_CONFIG.read_text()
    if replace:
        text = text.replace(*replace)
    path = tmp_path / "mushishi.toml"
    path.write_text(text + extra)
    load_settings(path)


def test_two_tenants_on_one_port_in_one_mode_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_with(tmp_path, "", ('tenants = ["vllm-agent"]',
                                 'tenants = ["vllm-agent", "vllm-forensic"]'))
    assert [str(i) for i in error.value.issues] == [
        "modes.agent.tenants: tenants 'vllm-agent' and 'vllm-forensic' both serve port 8000: "
        "tenants sharing a port conflict and cannot run in the same mode"]


@pytest.mark.parametrize(("probe", "path", "message"), [
    ('{ kind = "vllm" }', "tenants.extra.busy_probe.url", "kind 'vllm' needs the URL"),
    ('{ kind = "json", url = "http://127.0.0.1:9/q" }', "tenants.extra.busy_probe.json_path",
     "dotted path"),
    ('{ kind = "sglang", url = "http://127.0.0.1:9/" }', "tenants.extra.busy_probe.kind", ""),
])
def test_busy_probe_needs_what_its_kind_reads(tmp_path: Path, probe: str, path: str,
                                              message: str) -> None:
    extra = f"""
[tenants.extra]
command = ["/usr/bin/true"]
health_url = "http://127.0.0.1:9/health"
busy_probe = {probe}
vram_mib = 1
"""
    with pytest.raises(ConfigError) as error:
        load_with(tmp_path, extra)
    assert any(issue.path == path and message in issue.message
               for issue in error.value.issues), error.value.issues


def test_example_config_is_valid_for_gpu_modes() -> None:
    settings = load_settings(EXAMPLE_CONFIG)
    assert settings.gpu.docker_host == "unix:///var/run/docker.sock"
    assert settings.modes["forensic"].power_limit_w == 450


EXTRA_TENANT = """
[tenants.extra]
command = {command}
health_url = "http://127.0.0.1:9/health"
vram_mib = 1
{more}
"""


@pytest.mark.parametrize(("command", "more", "path", "message"), [
    ('["docker", "run", "--network=mushishi-tenants", "img"]', "",
     "tenants.extra.runtime", 'the command runs docker, whose containers this unit\'s '
     'IPAddressDeny= does not reach: set runtime = "docker"'),
    ('["/usr/bin/podman", "run", "--cgroups=split", "img"]', "",
     "tenants.extra.runtime", 'set runtime = "podman"'),
    ('["/usr/bin/vllm", "serve"]', 'runtime = "docker"', "tenants.extra.command",
     "a docker tenant's command must be `docker run …` or `docker compose … up`"),
    ('["podman", "run", "img"]', 'runtime = "podman"', "tenants.extra.command",
     "`podman run` without --cgroups=split puts the container outside this unit's cgroup"),
    ('["/usr/bin/true"]', 'env = { "BAD NAME" = "1" }', "tenants.extra.env",
     "is not an environment variable name"),
    ('["/usr/bin/true"]', 'runtime = "lxc"', "tenants.extra.runtime", ""),
])
def test_a_tenant_must_run_what_its_runtime_confines(tmp_path: Path, command: str, more: str,
                                                     path: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_with(tmp_path, EXTRA_TENANT.format(command=command, more=more))
    assert any(issue.path == path and message in issue.message
               for issue in error.value.issues), error.value.issues


@pytest.mark.parametrize(("subnet", "local", "message"), [
    ("10.0.0.0/8", '"10.20.0.0/16"', "overlaps router.local_networks entry 10.20.0.0/16 "
                                     "without lying inside it"),
    ("100.64.0.0/24", "", "must be a private IPv4 network"),
    ("203.0.113.0/24", "", "must be a private IPv4 network"),
    ("10.0.0.0/30", "", "of /29 or larger"),
])
def test_the_tenants_subnet_is_private_and_does_not_cut_into_a_local_network(
        tmp_path: Path, subnet: str, local: str, message: str) -> None:
    text = EXAMPLE_CONFIG.read_text().replace(
        'docker_subnet = "172.30.240.0/24"', f'docker_subnet = "{subnet}"')
    if local:
        text = text.replace('local_networks = ["127.0.0.0/8", "::1/128", "100.64.0.0/10"]',
                            f'local_networks = ["127.0.0.0/8", {local}]')
        assert local in text
    path = tmp_path / "mushishi.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_settings(path)
    assert any(issue.path == "gpu.docker_subnet" and message in issue.message
               for issue in error.value.issues), error.value.issues


def test_a_subnet_inside_a_local_network_is_fine_and_names_are_checked(tmp_path: Path) -> None:
    text = EXAMPLE_CONFIG.read_text().replace(
        '"100.64.0.0/10"]', '"100.64.0.0/10", "10.0.0.0/8"]').replace(
        'docker_subnet = "172.30.240.0/24"', 'docker_subnet = "10.30.0.0/24"')
    path = tmp_path / "mushishi.toml"
    path.write_text(text)
    assert str(load_settings(path).gpu.docker_subnet) == "10.30.0.0/24"
    path.write_text(text.replace('docker_network = "mushishi-tenants"', 'docker_network = "host"'))
    with pytest.raises(ConfigError) as error:
        load_settings(path)
    assert [i.path for i in error.value.issues] == ["gpu.docker_network"]


def test_example_tenants_run_in_docker_with_the_phone_home_defaults() -> None:
    settings = load_settings(EXAMPLE_CONFIG)
    assert {t.runtime for t in settings.tenants.values()} == {"docker"}
    assert settings.gpu.docker_network == "mushishi-tenants"
    assert settings.tenants["vllm-forensic"].env == {"VLLM_LOGGING_LEVEL": "WARNING"}


def test_mode_switching_keys_live_in_modes_beside_the_mode_tables(tmp_path: Path) -> None:
    path = tmp_path / "mushishi.toml"
    path.write_text('[modes]\nidle_mode = "agent"\nidle_after_s = 60\n\n'
                    '[modes.forensic]\ntenants = []\n')
    loaded = load_config(path)
    switching = loaded.settings.mode_switching
    assert (switching.idle_mode, switching.idle_after_s, switching.min_mode_dwell_s) == (
        "agent", 60.0, 120.0)
    assert set(loaded.settings.modes) == {"forensic", "agent", "creative", "audio", "off"}
    # `mushishi config check` shows where each came from, under the key the file uses.
    assert loaded.sources["modes.idle_mode"] == "file"
    assert loaded.sources["modes.min_mode_dwell_s"] == "default"


def test_mode_switching_keys_from_the_environment(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "mushishi.toml"
    path.write_text("[modes.forensic]\ntenants = []\n")
    monkeypatch.setenv("MUSHISHI_MODES__MIN_MODE_DWELL_S", "5")
    loaded = load_config(path)
    assert loaded.settings.mode_switching.min_mode_dwell_s == 5.0
    assert loaded.sources["modes.min_mode_dwell_s"] == "env MUSHISHI_MODES__MIN_MODE_DWELL_S"


@pytest.mark.parametrize(("text", "issue"), [
    ('[modes]\nidle_mode = "gaming"\n',
     "modes.idle_mode: unknown mode 'gaming' (modes: agent, audio, creative, forensic, off)"),
    ("[modes]\nidle_after_s = 0\n", "modes.idle_after_s: Input should be greater than 0"),
    ("[modes]\nmin_mode_dwell_s = -1\n",
     "modes.min_mode_dwell_s: Input should be greater than or equal to 0"),
])
def test_mode_switching_errors_name_the_key_in_the_file(tmp_path: Path, text: str,
                                                        issue: str) -> None:
    path = tmp_path / "mushishi.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_settings(path)
    assert issue in [str(i) for i in error.value.issues]
