"""human_bytes: binary units, one decimal, bytes whole."""

from __future__ import annotations

import pytest

from mushishi.shared.formatting import human_bytes


@pytest.mark.parametrize(("size", "shown"), [
    (0, "0 B"),
    (1023, "1023 B"),
    (1024, "1.0 KiB"),
    (1536, "1.5 KiB"),
    (5 * 1024 ** 2 + 1024 ** 2 // 2, "5.5 MiB"),
    (8 * 1024 ** 3, "8.0 GiB"),
    (3 * 1024 ** 4, "3.0 TiB"),
    (2048 * 1024 ** 4, "2048.0 TiB"),
])
def test_human_bytes_uses_the_largest_binary_unit_below_1024(size: int, shown: str) -> None:
    assert human_bytes(size) == shown
