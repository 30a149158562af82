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
