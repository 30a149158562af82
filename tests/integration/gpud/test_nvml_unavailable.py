"""On this machine there is no NVIDIA GPU or driver: `probe = "nvml"` must fail with one
clear line naming the fix, never a traceback, and gpud must exit 69 (not restarted)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.integration.tenant.conftest import NotifySocket
from tests.paths import BINDIR

CONFIG = """
[gpu]
probe = "nvml"
[modes.forensic]
tenants = ["vllm"]
[tenants.vllm]
command = ["/usr/bin/true"]
health_url = "http://127.0.0.1:9/health"
vram_mib = 1000
"""


def test_gpud_with_nvml_on_a_gpu_less_machine_exits_69_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "mushishi.toml"
    config.write_text(CONFIG)
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        result = subprocess.run([f"{BINDIR}/mushishi-gpud", "--config", str(config)],
                                env={**os.environ, "NOTIFY_SOCKET": str(notify.path)},
                                capture_output=True, text=True, timeout=60, check=False)
        status = notify.wait_for("STATUS=")
    finally:
        notify.close()
    assert result.returncode == 69
    assert "Traceback" not in result.stderr
    assert status.startswith("STATUS=cannot read the GPU: NVML unavailable (")
    assert 'set [gpu] probe = "simulated" on a machine without a GPU' in status
    assert "\n" not in status


def test_tenant_guard_with_nvml_on_a_gpu_less_machine_fails_with_one_line(tmp_path: Path
                                                                         ) -> None:
    config = tmp_path / "mushishi.toml"
    config.write_text(CONFIG)
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        result = subprocess.run([f"{BINDIR}/mushishi-tenant", "--config", str(config), "guard",
                                 "vllm"], env={**os.environ, "NOTIFY_SOCKET": str(notify.path)},
                                capture_output=True, text=True, timeout=60, check=False)
        status = notify.wait_for("STATUS=")
    finally:
        notify.close()
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert status.startswith("STATUS=tenant vllm: cannot check free VRAM: NVML unavailable (")
