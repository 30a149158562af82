"""Every logging call in mushishi passes a literal format string as its message.

This is what lets a record leave the box in redacted form (shared/journal.py's
MUSHISHI_REDACTED, the only part of a mushishi record a failure alert carries): the format
string is text written here, and its arguments, which may quote a backend or a prompt, are
withheld. A message built at run time (`log.error(body)`, an f-string) would be sent whole.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("shared", "services", "ctl", "firewall")
METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "log"}


def _receiver(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def logging_calls(path: Path) -> list[ast.Call]:
    """Calls like `log.warning(…)`, `self.log.error(…)`, `logging.info(…)`."""
    return [node for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in METHODS and "log" in _receiver(node.func.value).lower()]


def _is_literal(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_logging_call_passes_a_literal_format_string(package: str) -> None:
    wrong = []
    for path in sorted((REPO / package).rglob("*.py")):
        for call in logging_calls(path):
            message = call.args[1:2] if call.func.attr == "log" else call.args[:1]
            if not message or not _is_literal(message[0]):
                shown = ast.unparse(message[0]) if message else "(no message)"
                wrong.append(f"{path.relative_to(REPO)}:{call.lineno}: {shown[:60]}")
    assert not wrong, ("logging calls whose message is not a literal format string (pass "
                       "the values as arguments):\n" + "\n".join(wrong))


def test_the_check_sees_the_calls_it_is_about() -> None:
    found = sum(len(logging_calls(path)) for package in PACKAGES
                for path in (REPO / package).rglob("*.py"))
    assert found > 100


def test_the_check_tells_a_literal_from_a_built_message(tmp_path: Path) -> None:
    source = tmp_path / "module.py"
    source.write_text('log.error("backend %s", name)\nlog.error(f"backend {body}")\n'
                      'self.log.warning(body)\nlogger.log(40, "x %s", y)\n')
    calls = logging_calls(source)
    assert [_is_literal(c.args[1] if c.func.attr == "log" else c.args[0]) for c in calls] == [
        True, False, False, True]
