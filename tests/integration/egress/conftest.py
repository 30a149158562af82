"""Fixtures: the two stand-in cloud providers, listening on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator

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
