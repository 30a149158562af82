"""Paths every test may need."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = REPO / "docs" / "examples" / "mushishi.toml"
BINDIR = str(Path(sys.executable).parent)
