"""systemd's object paths for unit names, as the shared systemd client computes them."""

from __future__ import annotations

import pytest

from mushishi.shared.systemd import unit_path


@pytest.mark.parametrize(("unit", "path"), [
    ("mushishi-agent.target", "/org/freedesktop/systemd1/unit/mushishi_2dagent_2etarget"),
    ("mushishi-tenant@vllm-forensic.service",
     "/org/freedesktop/systemd1/unit/mushishi_2dtenant_40vllm_2dforensic_2eservice"),
    ("9p.mount", "/org/freedesktop/systemd1/unit/_39p_2emount"),
])
def test_unit_path_escapes_like_systemd(unit: str, path: str) -> None:
    assert unit_path(unit) == path
