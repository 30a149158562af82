"""A failed unit and its alert instance name each other without a doubled suffix."""

from __future__ import annotations

import pytest

from mushishi.shared.unit_names import ON_FAILURE, failed_unit


def test_on_failure_passes_the_unit_name_without_its_type_suffix() -> None:
    # %N: mushishi-backup.service fails -> mushishi-alert@mushishi-backup.service
    assert ON_FAILURE == "OnFailure=mushishi-alert@%N.service"


@pytest.mark.parametrize(("instance", "unit"), [
    ("mushishi-backup", "mushishi-backup.service"),
    ("mushishi-tenant@vllm-agent", "mushishi-tenant@vllm-agent.service"),
    ("mushishi-gpu-prepare@agent", "mushishi-gpu-prepare@agent.service"),
    ("mushishi-tenant@model.v2", "mushishi-tenant@model.v2.service"),
    ("mushishi-backup.service", "mushishi-backup.service"),  # by hand, or installed before %N
    ("mushishi-router.socket", "mushishi-router.socket"),
    ("mushishi-watchdog.timer", "mushishi-watchdog.timer"),
])
def test_failed_unit_restores_the_service_suffix_and_keeps_an_explicit_type(
        instance: str, unit: str) -> None:
    assert failed_unit(instance) == unit
