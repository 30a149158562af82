"""Generated documents must match the code they describe."""

from __future__ import annotations

from mushishi.shared.config.reference import render
from tests.paths import REPO


def test_configuration_reference_matches_the_models() -> None:
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == render(), (
        "docs/configuration.md is stale: run "
        "`.venv/bin/python -m mushishi.shared.config.reference > docs/configuration.md`"
    )
