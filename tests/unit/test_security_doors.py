"""docs/security.md's table of doors names every door, and every test it names exists.

The table ("## Every door") is the promise in one place: each way T1 text could leave the
box, the layer that closes it, and the tests that prove it. This reads the table and each
named test file (as source, importing nothing), so a door cannot drop out of the table and
a renamed or deleted test cannot go on being cited as proof.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SECURITY = REPO / "docs" / "security.md"
HEADING = "## Every door"
# The doors of issue 13, item 10, in the order the table gives them.
DOORS = ("router", "egress socket", "router socket", "alerts", "logs", "traces", "DNS",
         "tenant egress", "media URLs", "reload")
TEST_ID = re.compile(r"`(tests/[\w/]+\.py)::([\w:]+)`")


def door_table(text: str) -> dict[str, list[tuple[str, str]]]:
    """{door: [(test file, test name), …]} from the table under HEADING."""
    section = text.split(f"\n{HEADING}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert header == ["door", "how T1 text could leave", "closed by", "proof"], header
    table: dict[str, list[tuple[str, str]]] = {}
    for row in rows[2:]:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert len(cells) == len(header), f"a row of {len(cells)} cells: {row}"
        table[cells[0]] = TEST_ID.findall(cells[3])
    return table


def defined_tests(path: Path) -> set[str]:
    """Test functions of a pytest file, as pytest ids: `name` or `Class::name`."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            names.update(f"{node.name}::{item.name}" for item in node.body
                         if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return {name for name in names if name.rsplit("::", 1)[-1].startswith("test_")}


def missing(references: list[tuple[str, str]]) -> list[str]:
    """The references whose file or test does not exist."""
    wrong = []
    for file, name in references:
        path = REPO / file
        if not path.is_file():
            wrong.append(f"{file}::{name}: no such file")
        elif name not in defined_tests(path):
            wrong.append(f"{file}::{name}: no such test in {file}")
    return wrong




def test_the_table_names_every_door_with_a_proof() -> None:
    table = door_table(SECURITY.read_text())
    assert tuple(table) == DOORS
    assert [door for door, proofs in table.items() if not proofs] == []


@pytest.mark.parametrize("door", DOORS)
def test_every_test_the_table_names_exists(door: str) -> None:
    assert missing(door_table(SECURITY.read_text())[door]) == []


def test_every_test_the_page_names_anywhere_exists() -> None:
    assert missing(TEST_ID.findall(SECURITY.read_text())) == []


def test_the_check_finds_a_test_that_is_gone() -> None:
    here = str(Path(__file__).relative_to(REPO))
    assert missing([(here, "test_the_check_finds_a_test_that_is_gone")]) == []
    assert missing([(here, "test_that_was_renamed")]) == [
        f"{here}::test_that_was_renamed: no such test in {here}"]
    assert missing([("tests/unit/test_gone.py", "test_x")]) == [
        "tests/unit/test_gone.py::test_x: no such file"]
    text = (f"\n{HEADING}\n\n| door | how T1 text could leave | closed by | proof |\n"
            "|---|---|---|---|\n")
    assert door_table(text + "| reload | a | b | nothing |\n") == {"reload": []}
