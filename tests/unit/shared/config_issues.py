"""The config tests' common step: load a config text, collect what is wrong with it."""

from __future__ import annotations

from pathlib import Path

from mushishi.shared.config import ConfigError, load_config

# The smallest valid config: one local backend, one T1 profile.
MINIMAL = """
[backends.cpu]
url = "http://127.0.0.1:8001/v1"
model = "nemotron-cpu-prism"

[profiles.private]
tier = "T1"
chain = ["cpu"]
"""

# A local and a cloud backend, the start of most config tests' texts.
BACKENDS = """
[backends.cpu]
url = "http://127.0.0.1:8001/v1"
model = "cpu"

[backends.cloud]
url = "https://api.example.com/v1"
model = "big"
api_key_credential = "cloud-key"
"""


def config_issues(tmp_path: Path, text: str) -> list[str]:
    """Every problem load_config reports for `text` (as tmp_path/mushishi.toml); [] if valid."""
    path = tmp_path / "mushishi.toml"
    path.write_text(text)
    try:
        load_config(path)
    except ConfigError as error:
        return [str(issue) for issue in error.issues]
    return []
