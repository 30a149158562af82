"""Session fixtures every test directory may use: a real llama-server and a tiny model.

Both fail loudly when they cannot be provided; nothing here skips.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from tests.assets import tiny_model as tiny_model_module
from tests.paths import REPO

# Readable by user mushishi (units in the sandbox run as it) and not under /tmp, which the
# sandbox cleans at boot. The sandbox sees this host directory through its overlay of /.
ASSET_DIR = Path("/var/cache/mushishi/test-assets")


@pytest.fixture(scope="session")
def llama_server_binary() -> Path:
    """The cached static llama-server (scripts/build-llama-server.sh builds it once)."""
    script = REPO / "scripts" / "build-llama-server.sh"
    result = subprocess.run([str(script)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"{script} failed ({result.returncode}); llama-server is needed by the "
                    f"tests:\n{result.stderr[-3000:]}")
    binary = Path(result.stdout.strip().splitlines()[-1])
    if not binary.is_file():
        pytest.fail(f"{script} printed {binary}, which is not a file")
    return binary


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The tiny llama GGUF (tests/assets/tiny_model.py), written once per session.

    Its name carries a hash of the generator, so sessions running different generator
    versions side by side never overwrite each other's file, and the write is atomic.
    """
    source = Path(tiny_model_module.__file__).read_bytes()
    ASSET_DIR.mkdir(parents=True, exist_ok=True)
    ASSET_DIR.chmod(0o755)
    ASSET_DIR.parent.chmod(ASSET_DIR.parent.stat().st_mode | 0o755)
    path = ASSET_DIR / f"tiny-{hashlib.sha256(source).hexdigest()[:12]}.gguf"
    return tiny_model_module.write_tiny_model(path)
