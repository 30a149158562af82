"""A real llama-server serving the tiny model, for the bench's tests."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ports import free_port

ALIAS = "tiny-floor"


@dataclass(frozen=True)
class LlamaServer:
    """A running llama-server: its port and alias."""

    port: int
    alias: str

    @property
    def url(self) -> str:
        """Its OpenAI base URL."""
        return f"http://127.0.0.1:{self.port}/v1"


def wait_for_alias(port: int, alias: str, process: subprocess.Popen[bytes],
                   within: float = 60.0) -> None:
    """A real wait for a real server: /v1/models lists the alias."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llama-server exited {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
                if alias in json.dumps(json.load(r)):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"llama-server did not serve {alias} within {within:g}s")


@pytest.fixture(scope="module")
def llama(llama_server_binary: Path, tiny_model: Path) -> Iterator[LlamaServer]:
    """llama-server on a free port (1 thread, 512 tokens of context, like the demo)."""
    port = free_port()
    process = subprocess.Popen(
        [str(llama_server_binary), "-m", str(tiny_model), "--alias", ALIAS, "--host",
         "127.0.0.1", "--port", str(port), "-c", "512", "-t", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_alias(port, ALIAS, process)
        yield LlamaServer(port, ALIAS)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
