""".env.example lists every environment variable the code reads.

The scan is syntactic (ast): `os.getenv(X)`, and `.get(X)` / `.pop(X)` / `[X]` on anything
named like an environment (`environ`, `os.environ`, `self.environ`, `env`, `environment`).
X is resolved when it is a string, a module-level constant of the package, or the loop
variable of a `for` over literal strings. A read the scan cannot resolve must be one of the
known patterns below (documented in .env.example by its prefix), or the test fails naming
the file and line, so a new variable cannot slip in unlisted.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from tests.paths import REPO

PACKAGE_DIRS = ("services", "shared", "ctl", "firewall")
ENV_NAMES = re.compile(r"^(env|environment)$|environ$")
# Reads whose name is computed: (file, variable) -> the prefix .env.example must document.
DYNAMIC = {
    ("shared/credentials.py", "variable"): "MUSHISHI_CREDENTIAL_",
}


def package_files() -> list[Path]:
    return sorted(p for d in PACKAGE_DIRS for p in (REPO / d).rglob("*.py"))


def _string(node: ast.expr, known: dict[str, str]) -> str | None:
    """A string literal, a known constant, or `+` of those (`PREFIX + "NAME"`)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return known.get(node.id)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _string(node.left, known), _string(node.right, known)
        return None if left is None or right is None else left + right
    return None


def constants(files: list[Path]) -> dict[str, str]:
    """Module-level `NAME = "string"` (or `PREFIX + "string"`) assignments in the package."""
    found: dict[str, str] = {}
    trees = [ast.parse(path.read_text()) for path in files]
    for _ in range(2):  # a second pass resolves constants built from another module's
        for tree in trees:
            for node in tree.body:
                if isinstance(node, ast.Assign) and \
                        (value := _string(node.value, found)) is not None:
                    for target in node.targets:
                        if isinstance(target, ast.Name):
                            found[target.id] = value
    return found


def string_tuples(files: list[Path]) -> dict[str, list[str]]:
    """Module-level `NAMES = ("A", "B")` tuples of literal strings in the package."""
    found: dict[str, list[str]] = {}
    for path in files:
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple) and \
                    all(isinstance(e, ast.Constant) and isinstance(e.value, str)
                        for e in node.value.elts):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        found[target.id] = [e.value for e in node.value.elts]  # type: ignore[attr-defined]
    return found


def _is_environment(node: ast.expr) -> bool:
    name = node.attr if isinstance(node, ast.Attribute) else (
        node.id if isinstance(node, ast.Name) else "")
    return bool(ENV_NAMES.search(name))


def _loop_values(tree: ast.AST, tuples: dict[str, list[str]]) -> dict[str, list[str]]:
    """Loop variables over tuples/lists of literal strings, or a package constant of them."""
    values: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.For) and isinstance(node.target, ast.Name) and \
                isinstance(node.iter, ast.Name) and node.iter.id in tuples:
            values.setdefault(node.target.id, []).extend(tuples[node.iter.id])
        elif isinstance(node, ast.For) and isinstance(node.target, ast.Name) and \
                isinstance(node.iter, ast.Tuple | ast.List):
            items = [e.value for e in node.iter.elts
                     if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            if len(items) == len(node.iter.elts):
                values.setdefault(node.target.id, []).extend(items)
    return values


def reads(path: Path, known: dict[str, str], tuples: dict[str, list[str]] | None = None,
          ) -> Iterator[tuple[str | None, str, int]]:
    """(variable or None, the unresolved expression, line) for each read in `path`."""
    tree = ast.parse(path.read_text())
    loops = _loop_values(tree, tuples or {})
    for node in ast.walk(tree):
        argument: ast.expr | None = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            func = node.func
            reads_environment = func.attr in ("get", "pop", "setdefault") and \
                _is_environment(func.value)
            if node.args and (reads_environment or func.attr == "getenv"):
                argument = node.args[0]
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and \
                _is_environment(node.value):
            argument = node.slice
        if argument is None:
            continue
        if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
            yield argument.value, "", node.lineno
        elif isinstance(argument, ast.Name | ast.Attribute):
            name = argument.id if isinstance(argument, ast.Name) else argument.attr
            if name in loops:
                for value in loops[name]:
                    yield value, "", node.lineno
            elif name in known:
                yield known[name], "", node.lineno
            else:
                yield None, name, node.lineno
        else:
            yield None, ast.unparse(argument), node.lineno


def test_env_example_lists_every_variable_the_code_reads() -> None:
    files = package_files()
    known = constants(files)
    tuples = string_tuples(files)
    listed = set(re.findall(r"\b[A-Z][A-Z0-9_]+\b", (REPO / ".env.example").read_text()))
    example = (REPO / ".env.example").read_text()
    missing: list[str] = []
    unresolved: list[str] = []
    seen: set[str] = set()
    for path in files:
        relative = str(path.relative_to(REPO))
        for variable, expression, line in reads(path, known, tuples):
            if variable is not None:
                seen.add(variable)
                if variable not in listed:
                    missing.append(f"{variable} ({relative}:{line})")
                continue
            prefix = DYNAMIC.get((relative, expression))
            if prefix is None:
                unresolved.append(f"{relative}:{line}: {expression}")
            elif prefix not in example:
                missing.append(f"{prefix}… ({relative}:{line})")
    assert not unresolved, ("environment reads the scan cannot name; list their pattern in "
                            f"DYNAMIC and .env.example: {unresolved}")
    assert not missing, f"read by the code but not in .env.example: {missing}"
    # The scan itself works: it finds the variables we know the code reads.
    assert {"MUSHISHI_CONFIG", "CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET", "NO_COLOR",
            "MUSHISHI_TEST_DISABLE_CONNECT_CHECK", "LISTEN_FDS", "TZ"} <= seen


def test_the_scan_finds_reads_it_is_shown(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os\n"
        "NAME = 'FROM_CONSTANT'\n"
        "def f(environ, self):\n"
        "    os.environ.get('A_LITERAL')\n"
        "    os.getenv(NAME)\n"
        "    environ['SUBSCRIPTED']\n"
        "    self.environ.pop('POPPED', None)\n"
        "    for n in ('LOOP_ONE', 'LOOP_TWO'):\n"
        "        environ.get(n)\n"
        "    environ.get(computed)\n"
        "    other.get('NOT_AN_ENVIRONMENT')\n")
    found = list(reads(sample, {"NAME": "FROM_CONSTANT"}))
    assert sorted(v for v, _, _ in found if v) == [
        "A_LITERAL", "FROM_CONSTANT", "LOOP_ONE", "LOOP_TWO", "POPPED", "SUBSCRIPTED"]
    assert [(e, line) for v, e, line in found if v is None] == [("computed", 10)]
