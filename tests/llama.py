"""A real llama-server serving the tiny model (tests/assets/tiny_model.py), for tests that
need a real OpenAI-compatible backend or CPU floor."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.ports import free_port


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


@contextlib.contextmanager
def running_llama(binary: Path, model: Path, alias: str, *extra: str
                  ) -> Iterator[LlamaServer]:
    """llama-server on a free port (1 thread, 512 tokens of context, like the demo), with
    `extra` arguments (`--embeddings --pooling mean`, `--reranking` …)."""
    port = free_port()
    process = subprocess.Popen(
        [str(binary), "-m", str(model), "--alias", alias, "--host", "127.0.0.1", "--port",
         str(port), "-c", "512", "-t", "1", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_alias(port, alias, process)
        yield LlamaServer(port, alias)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
