"""`mushishi install` for the bench: the same kernel confinement as the router, write access
to its results and textfile only, its API key credential only when it has one."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from mushishi.ctl.install import UNIT_DIR, plan_install
from mushishi.shared.config import load_settings
from tests.unit.ctl.allow_lists import admits

CONFIG = """
[router]
local_networks = ["127.0.0.0/8", "::1/128", "100.64.0.0/10"]
[bench]
results = "{results}"
textfile_dir = "/var/lib/node-exporter"
api_key_credential = "bench-key"
[watchdog]
bench_results = "{results}"
"""


def plan(tmp_path: Path, results: str = "/var/lib/mushishi/bench/results.csv",
         credential: bool = True) -> dict[PurePosixPath, tuple[str, int]]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "mushishi.toml"
    config.write_text(CONFIG.format(results=results))
    root = tmp_path / "root"
    if credential:
        (root / "etc/mushishi/credentials").mkdir(parents=True)
        (root / "etc/mushishi/credentials/bench-key").write_text("sk-bench")
    return plan_install(load_settings(config), "/opt/mushishi/bin", root=root,
                        config_text=None).files


def test_bench_is_confined_to_the_local_networks_like_the_router(tmp_path: Path) -> None:
    files = plan(tmp_path)
    text, _ = files[UNIT_DIR / "mushishi-bench.service.d" / "local-networks.conf"]
    assert admits(text, "127.0.0.1") and admits(text, "::1") and admits(text, "100.64.0.1")
    assert not admits(text, "127.0.0.53") and not admits(text, "100.100.100.100")
    unit, _ = files[UNIT_DIR / "mushishi-bench.service"]
    assert "IPAddressDeny=any" in unit and "IgnoreOnIsolate=yes" in unit
    assert "ExecStart=/opt/mushishi/bin/mushishi bench" in unit
    assert "User=mushishi" in unit and "ProtectSystem=strict" in unit
    timer, _ = files[UNIT_DIR / "mushishi-bench.timer"]
    assert "OnCalendar=monthly" in timer and "Persistent=true" in timer


def test_bench_writes_its_textfile_and_a_results_file_outside_its_state_directory(
        tmp_path: Path) -> None:
    inside, _ = plan(tmp_path)[UNIT_DIR / "mushishi-bench.service.d" / "paths.conf"]
    assert inside.splitlines()[1:] == ["[Service]", "ReadWritePaths=-/var/lib/node-exporter"]
    outside, _ = plan(tmp_path / "b", "/srv/bench/results.csv")[
        UNIT_DIR / "mushishi-bench.service.d" / "paths.conf"]
    assert "ReadWritePaths=-/srv/bench" in outside


def test_bench_gets_its_api_key_credential_only_when_it_exists(tmp_path: Path) -> None:
    files = plan(tmp_path)
    text, _ = files[UNIT_DIR / "mushishi-bench.service.d" / "credentials.conf"]
    assert "LoadCredential=bench-key:/etc/mushishi/credentials/bench-key" in text
    assert UNIT_DIR / "mushishi-bench.service.d" / "credentials.conf" not in plan(
        tmp_path / "none", credential=False)


def test_textfile_directory_of_the_bench_is_created_by_tmpfiles(tmp_path: Path) -> None:
    files = plan(tmp_path)
    [tmpfiles] = [text for path, (text, _) in files.items() if path.name.endswith(".conf")
                  and "tmpfiles" in str(path)]
    assert "d /var/lib/node-exporter 2775 :root mushishi -" in tmpfiles
