"""How quantities read in messages people see (logs, status lines, errors)."""

from __future__ import annotations


def human_bytes(size: int) -> str:
    """1536 -> '1.5 KiB'; binary units up to TiB, one decimal (bytes as a whole number)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
