"""Fixtures: the ntfy stand-in, started for real on port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.standins.ntfy import NtfyStandin


@pytest.fixture
async def ntfy() -> AsyncIterator[NtfyStandin]:
    """An ntfy stand-in that needs no token."""
    server = NtfyStandin()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
