"""Fixtures for tests in a real, booted systemd (see devtools.sandbox).

These tests never skip: a machine that cannot boot the sandbox fails them with the reason.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devtools.sandbox import Sandbox
from tests.paths import EXAMPLE_CONFIG


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    """One booted systemd for the whole session, with mushishi installed from the example."""
    box = Sandbox()
    box.boot()
    try:
        box.install(EXAMPLE_CONFIG.read_text())
        yield box
    finally:
        box.stop()


@pytest.fixture
def fresh_sandbox() -> Iterator[Sandbox]:
    """A sandbox of the test's own, for tests that change global state."""
    box = Sandbox()
    box.boot()
    try:
        yield box
    finally:
        box.stop()
