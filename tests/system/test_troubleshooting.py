"""Every command of docs/troubleshooting.md runs in the booted stack (after every oneshot
ran once, with node_exporter serving their textfiles), so the recipes are tried, not
imagined: each `sh` block line is run there and must exit 0 (or the status its tool
documents for "something needs a look")."""

from __future__ import annotations

import re

from devtools.sandbox import SANDBOX_PATH, Sandbox
from tests.paths import BINDIR, REPO
from tests.system.test_observability import (  # noqa: F401 (fixtures)
    node_exporter,
    oneshots_ran,
    stack,
)

# Tools whose non-zero exit is an answer, not a failure.
ALLOWED = {"mushishi status": {0, 1}, "systemctl status": {0, 3}}


def commands() -> list[str]:
    text = (REPO / "docs" / "troubleshooting.md").read_text()
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.DOTALL):
        lines += [line.strip() for line in block.splitlines()
                  if line.strip() and not line.strip().startswith("#")]
    return lines


def test_every_recipe_command_runs_in_the_booted_stack(
        oneshots_ran: Sandbox, node_exporter: Sandbox) -> None:  # noqa: F811
    found = commands()
    assert len(found) >= 40, found
    failures = []
    for command in found:
        result = oneshots_ran.run(command, check=False, timeout=120,
                                  env={"PATH": f"{BINDIR}:{SANDBOX_PATH}"})
        allowed = next((codes for prefix, codes in ALLOWED.items()
                        if command.startswith(prefix)), {0})
        if result.returncode not in allowed or "command not found" in result.stderr:
            failures.append(f"`{command}` exited {result.returncode}: "
                            f"{(result.stdout + result.stderr)[-600:]}")
    assert not failures, "\n\n".join(failures)
