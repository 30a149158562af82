"""`mushishi config check`: exit 0 with sources, exit 1 naming every bad key."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.paths import BINDIR, EXAMPLE_CONFIG


def check(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([f"{BINDIR}/mushishi", "config", "check", *args],
                          capture_output=True, text=True, env=env, cwd=cwd)


def test_example_is_valid_and_every_value_shows_its_source(tmp_path: Path) -> None:
    result = check(str(EXAMPLE_CONFIG), cwd=tmp_path,
                   env={"PATH": "/usr/bin:/bin", "MUSHISHI_CPU_FLOOR__THREADS": "4"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("cpu_floor.threads") and line.endswith(
        "= 4  # env MUSHISHI_CPU_FLOOR__THREADS") for line in lines)
    assert any(line.startswith("cpu_floor.port") and line.endswith("# file") for line in lines)
    assert any(line.startswith("router.max_body_bytes") and line.endswith("# default")
               for line in lines)
    assert any(line.startswith("backends.kimi.api_key_credential") and "missing" in line
               for line in lines)


def test_typo_exits_1_and_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE_CONFIG.read_text().replace("queue_timeout_s = 120",
                                                      "queue_timout_s = 120"))
    result = check(str(bad), cwd=tmp_path)
    assert result.returncode == 1
    assert ("profiles.private.queue_timout_s: unknown key; did you mean 'queue_timeout_s'?"
            in result.stderr)
    assert result.stdout == ""


def test_config_env_variable_selects_the_file(tmp_path: Path) -> None:
    result = check(cwd=tmp_path, env={"PATH": "/usr/bin:/bin",
                                      "MUSHISHI_CONFIG": str(EXAMPLE_CONFIG)})
    assert result.returncode == 0
    assert result.stdout.startswith(f"# {EXAMPLE_CONFIG}: valid")


def test_a_model_server_port_opened_beyond_loopback_is_a_warning_naming_it(
        tmp_path: Path) -> None:
    # The example exposes only the router and (on purpose, optional) ComfyUI's web UI.
    result = check(str(EXAMPLE_CONFIG), "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines()
                if line.startswith("warning: firewall.")]
    assert len(warnings) == 1 and "'comfyui' exposes tcp 8188 to the tailnet: it is backend "\
        "comfy (backends.comfy.url) and tenant comfyui (tenants.comfyui.port)" in warnings[0], \
        result.stderr
    # vLLM's port opened to every interface: named by backend and tenants, still valid.
    exposed = tmp_path / "exposed.toml"
    exposed.write_text(EXAMPLE_CONFIG.read_text() + """
[[firewall.services]]
name = "vllm"
port = 8000
exposure = "lan"

[[firewall.services]]
name = "vllm-local"
port = 8001
exposure = "local"
""")
    result = check(str(exposed), "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    vllm = [line for line in result.stderr.splitlines() if "'vllm'" in line]
    assert vllm == [
        "warning: firewall.services[9]: 'vllm' exposes tcp 8000 to every interface: it is "
        "backend gpu (backends.gpu.url) and tenant vllm-forensic (tenants.vllm-forensic.port) "
        "and tenant vllm-agent (tenants.vllm-agent.port), so requests there skip the router "
        "(tiers, keys, journal, sovereignty checks); drop it from firewall.services (or set "
        'exposure = "local") and send clients to the router']
    assert "vllm-local" not in result.stderr  # loopback only: nothing to say
