"""A real llama-server serving the tiny model, for the bench's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.llama import LlamaServer, running_llama

ALIAS = "tiny-floor"


@pytest.fixture(scope="module")
def llama(llama_server_binary: Path, tiny_model: Path) -> Iterator[LlamaServer]:
    """llama-server on a free port (1 thread, 512 tokens of context, like the demo)."""
    with running_llama(llama_server_binary, tiny_model, ALIAS) as server:
        yield server
