"""The shipped units in a real systemd: they verify, modes isolate, always-on units stay."""

from __future__ import annotations

import time

import pytest

from devtools.sandbox import Sandbox
from mushishi.ctl.install import shipped_unit_names
from mushishi.shared.config import load_settings
from tests.paths import EXAMPLE_CONFIG

MODES = ["forensic", "agent", "creative", "audio", "off"]

# Stand-ins: the tenant runner belongs to the GPU-mode issue; here a tenant is a sleeper,
# and an always-on stand-in joins mushishi.target like the router or the CPU floor.
STANDIN_TENANT = """[Service]
Type=simple
ExecStartPre=
ExecStart=
ExecStart=/bin/sleep infinity
ExecStop=
"""
STANDIN_ALWAYS_ON = """[Unit]
Description=stand-in always-on mushishi unit
[Service]
ExecStart=/bin/sleep infinity
"""


@pytest.fixture(scope="module")
def modes_box(sandbox: Sandbox) -> Sandbox:
    sandbox.write("/etc/systemd/system/mushishi-tenant@.service.d/zz-standin.conf",
                  STANDIN_TENANT)
    sandbox.write("/etc/systemd/system/mushishi-standin-always.service", STANDIN_ALWAYS_ON)
    sandbox.write("/etc/systemd/system/mushishi.target.d/standin.conf",
                  "[Unit]\nWants=mushishi-standin-always.service\n")
    sandbox.systemctl("daemon-reload")
    return sandbox


def test_every_shipped_unit_passes_systemd_analyze_verify(sandbox: Sandbox) -> None:
    units = [f"/etc/systemd/system/{name}" for name in shipped_unit_names()]
    assert len(units) >= 20
    result = sandbox.run(["systemd-analyze", "verify", *units], check=False)
    # `verify` warns about unknown users before sysusers ran; install ran it, so any
    # output at all is a real problem.
    problems = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 0 and problems == [], "\n".join(problems)


def test_mode_targets_allow_isolate_and_conflict_with_each_other(sandbox: Sandbox) -> None:
    for mode in MODES:
        shown = sandbox.systemctl("show", f"mushishi-{mode}.target",
                                  "-p", "AllowIsolate", "-p", "Conflicts").stdout
        assert "AllowIsolate=yes" in shown
        others = {f"mushishi-{m}.target" for m in MODES if m != mode}
        conflicts = set(shown.split("Conflicts=", 1)[1].split())
        assert others <= conflicts


@pytest.mark.parametrize("mode", MODES)
def test_isolate_mode_keeps_always_on_and_stops_other_modes_tenants(
    modes_box: Sandbox, mode: str
) -> None:
    settings = load_settings(EXAMPLE_CONFIG)
    modes_box.systemctl("isolate", f"mushishi-{mode}.target", timeout=120)
    assert modes_box.is_active(f"mushishi-{mode}.target") == "active"
    assert modes_box.is_active("multi-user.target") == "active"
    assert modes_box.is_active("mushishi-standin-always.service") == "active"
    assert modes_box.is_active("mushishi-watchdog.timer") == "active"
    assert modes_box.is_active("mushishi-backup.timer") == "active"
    mine = set(settings.modes[mode].tenants)
    for other, other_mode in settings.modes.items():
        if other != mode:
            assert modes_box.is_active(f"mushishi-{other}.target") == "inactive"
        for tenant in other_mode.tenants:
            expected = "active" if tenant in mine else "inactive"
            assert modes_box.is_active(f"mushishi-tenant@{tenant}.service") == expected, (
                f"in mode {mode}, tenant {tenant} should be {expected}")


def test_running_backup_survives_isolate_but_an_ordinary_oneshot_does_not(
    modes_box: Sandbox,
) -> None:
    # The real backup unit, with only its command replaced by a long sleep.
    modes_box.write("/etc/systemd/system/mushishi-backup.service.d/zz-standin.conf",
                    "[Service]\nExecStart=\nExecStart=/bin/sleep 300\n")
    # The control: the same oneshot without IgnoreOnIsolate= must be stopped.
    modes_box.write("/etc/systemd/system/plain-oneshot.service",
                    "[Service]\nType=oneshot\nExecStart=/bin/sleep 300\n")
    modes_box.systemctl("daemon-reload")
    modes_box.systemctl("isolate", "mushishi-off.target")
    modes_box.systemctl("start", "--no-block", "mushishi-backup.service",
                        "plain-oneshot.service")
    modes_box.wait_for("mushishi-backup.service", "activating", timeout=20)
    modes_box.wait_for("plain-oneshot.service", "activating", timeout=20)
    before = modes_box.systemctl("show", "-p", "MainPID", "--value",
                                 "mushishi-backup.service").stdout.strip()
    try:
        modes_box.systemctl("isolate", "mushishi-creative.target")
        time.sleep(0.5)
        assert modes_box.is_active("mushishi-backup.service") == "activating"
        after = modes_box.systemctl("show", "-p", "MainPID", "--value",
                                    "mushishi-backup.service").stdout.strip()
        assert after == before != "0"
        # Isolate killed it (a killed oneshot ends "failed").
        assert modes_box.is_active("plain-oneshot.service") in ("inactive", "failed")
    finally:
        modes_box.systemctl("stop", "mushishi-backup.service", "plain-oneshot.service",
                            check=False)
        modes_box.run(["rm", "-f",
                       "/etc/systemd/system/mushishi-backup.service.d/zz-standin.conf"])
        modes_box.systemctl("daemon-reload")
