"""Unit hardening: `systemd-analyze security` of every shipped service, in a booted systemd
with the example config installed, stays at or below the exposure docs/security.md records
for it (a relaxation that raises a unit's exposure must be recorded, and explained there)."""

from __future__ import annotations

import re

from devtools.sandbox import Sandbox
from mushishi.ctl.install import shipped_unit_names
from tests.paths import REPO

# Template units are measured through one instance each.
INSTANCES = {"mushishi-alert@.service": "mushishi-alert@mushishi-router.service",
             "mushishi-gpu-prepare@.service": "mushishi-gpu-prepare@agent.service",
             "mushishi-tenant@.service": "mushishi-tenant@vllm-agent.service"}
OVERALL = re.compile(r"Overall exposure level for (\S+): (\d+\.\d+)")


def recorded() -> dict[str, float]:
    """`| \\`unit\\` | exposure | …` rows of docs/security.md's hardening table."""
    text = (REPO / "docs" / "security.md").read_text()
    return {match[1]: float(match[2]) for match in
            re.finditer(r"^\| `(mushishi-[a-z@.-]+\.service)` \| (\d+\.\d) \|", text,
                        re.MULTILINE)}


def test_every_service_stays_at_or_below_its_recorded_exposure(sandbox: Sandbox) -> None:
    services = [name for name in shipped_unit_names() if name.endswith(".service")]
    table = recorded()
    assert sorted(table) == sorted(services), (
        "docs/security.md's hardening table must list every shipped service exactly once: "
        f"missing {sorted(set(services) - set(table))}, extra {sorted(set(table) - set(services))}")
    measured: dict[str, float] = {}
    for name in services:
        instance = INSTANCES.get(name, name)
        result = sandbox.run(["systemd-analyze", "security", "--no-pager", instance],
                             check=False)
        match = OVERALL.search(result.stdout)
        assert match, f"{instance}: {result.stdout[-500:]}{result.stderr[-500:]}"
        measured[name] = float(match[2])
    worse = {name: (measured[name], table[name]) for name in services
             if measured[name] > table[name]}
    assert not worse, f"exposure above the recorded level (measured, recorded): {worse}"
