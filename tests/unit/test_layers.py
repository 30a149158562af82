"""The layers show in the imports: the shared library, the daemons, the operator's command
line, and test/demo tooling, each importing only the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# package directory -> installed prefixes its modules may not import
FORBIDDEN = {
    "shared": ("mushishi.services", "mushishi.ctl", "mushishi.firewall", "devtools", "tests"),
    "firewall": ("mushishi.services", "mushishi.ctl", "devtools", "tests"),
    "services": ("mushishi.ctl", "devtools", "tests"),
    "ctl": ("devtools", "tests"),
}


def imported_modules(path: Path) -> list[tuple[str, int]]:
    """Every module a file imports, with its line (relative imports resolved are not used
    in this tree)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.module, node.lineno))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_the_layers_below_it(package: str) -> None:
    wrong = []
    for path in sorted((REPO / package).rglob("*.py")):
        for module, line in imported_modules(path):
            for prefix in FORBIDDEN[package]:
                if module == prefix or module.startswith(prefix + "."):
                    wrong.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_the_scan_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from mushishi.ctl import main\n")
    assert imported_modules(module) == [("mushishi.ctl", 2)]


# Daemon packages whose modules another daemon may import, and why. Nothing else: a GPU
# probe, a busy probe or a D-Bus client that two daemons need lives in shared/.
OTHER_DAEMONS_ALLOWED = {
    "watchdog": {"backup"},   # restic's argv builders and output parsers, repository access
    "alert": {"watchdog"},    # mushishi-alert@ is the watchdog's outbox, started per unit
}


@pytest.mark.parametrize("daemon", sorted(p.name for p in (REPO / "services").iterdir()
                                          if (p / "__init__.py").exists()))
def test_a_daemon_imports_no_other_daemon_but_the_listed_ones(daemon: str) -> None:
    allowed = OTHER_DAEMONS_ALLOWED.get(daemon, set())
    wrong = []
    for path in sorted((REPO / "services" / daemon).rglob("*.py")):
        for module, line in imported_modules(path):
            parts = module.split(".")
            if parts[:2] == ["mushishi", "services"] and len(parts) > 2 \
                    and parts[2] not in (daemon, *allowed):
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert not wrong, "\n".join(wrong)
