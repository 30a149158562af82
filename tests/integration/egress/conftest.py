"""Fixtures: the two stand-in cloud providers, listening on 127.0.0.1; a directory other
users can reach."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.integration.egress.harness import start_providers
from tests.standins.cloud import CloudStandin


@pytest.fixture
async def providers() -> AsyncIterator[tuple[CloudStandin, CloudStandin]]:
    """kimi and groq stand-ins (their faults and keys are the test's to script)."""
    kimi, groq = await start_providers()
    yield kimi, groq
    await kimi.stop()
    await groq.stop()


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory another user can reach (pytest's tmp_path is 0700, root's)."""
    directory = Path(tempfile.mkdtemp(prefix="mushishi-egress-", dir="/tmp"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory)
