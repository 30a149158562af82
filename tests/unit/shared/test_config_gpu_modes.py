"""Config checks of [modes] and [tenants]: ports, busy probes."""

from __future__ import annotations

from pathlib import Path

import pytest

from mushishi.shared.config import ConfigError, load_settings
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
