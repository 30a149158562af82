"""mushishi-firewall.service in a booted systemd: it loads the confirmed rules at boot.

The sandbox has its own network namespace, so nft here never touches the host's rules.
"""

from __future__ import annotations

from devtools.sandbox import Sandbox
from tests.paths import BINDIR, EXAMPLE_CONFIG

UNIT = "mushishi-firewall.service"
MUSHISHI = f"{BINDIR}/mushishi"


def test_firewall_unit_fails_loudly_then_restores_the_confirmed_rules(
        fresh_sandbox: Sandbox) -> None:
    box = fresh_sandbox
    box.install(EXAMPLE_CONFIG.read_text())

    box.systemctl("start", UNIT, check=False)
    box.wait_for(UNIT, "failed", timeout=60)
    assert "no confirmed ruleset in /var/lib/mushishi/firewall" in box.journal("-u", UNIT)

    # The operator's path: apply (no sshd and no tailnet in here, hence the override),
    # then confirm; then a reboot empties the kernel's ruleset.
    applied = box.run([MUSHISHI, "firewall", "apply", "--no-wait", "--allow-ssh-lockout"],
                      check=False)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    box.run([MUSHISHI, "firewall", "confirm"])
    confirmed = box.run(["nft", "-s", "list", "table", "inet", "mushishi"]).stdout
    box.run(["nft", "flush", "ruleset"])

    box.systemctl("reset-failed", UNIT)
    box.systemctl("start", UNIT)
    assert box.is_active(UNIT) == "active"
    assert box.run(["nft", "-s", "list", "table", "inet", "mushishi"]).stdout == confirmed
    assert '"action": "restored"' in box.path("/var/lib/mushishi/firewall/last.json").read_text()

    box.systemctl("enable", UNIT)
    assert box.path(f"/etc/systemd/system/sysinit.target.wants/{UNIT}").is_symlink()
