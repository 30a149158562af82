"""Structured journal fields from the logging helper, read back with journalctl filters."""

from __future__ import annotations

import json
import uuid

from devtools.sandbox import Sandbox
from tests.paths import BINDIR

LOGGING_SCRIPT = """
import logging
from mushishi.shared.journal import bind_fields, log_extra, setup_logging
setup_logging("mushishi-journal-probe")
log = logging.getLogger("probe")
with bind_fields(MUSHISHI_PROFILE="private", MUSHISHI_TIER="T1"):
    log.info("routed %s", "{marker}", extra=log_extra(backend="cpu"))
log.warning("unrelated {marker}")
"""


def test_log_line_from_a_unit_is_found_by_its_profile_field(sandbox: Sandbox) -> None:
    marker = uuid.uuid4().hex
    sandbox.run([
        "systemd-run", "--wait", "--quiet", "--unit", f"journal-probe-{marker[:8]}",
        "-p", "User=mushishi", f"{BINDIR}/python", "-c",
        LOGGING_SCRIPT.format(marker=marker),
    ])
    records = [
        json.loads(line)
        for line in sandbox.journal("MUSHISHI_PROFILE=private", "-o", "json").splitlines()
    ]
    mine = [r for r in records if marker in r.get("MESSAGE", "")]
    assert len(mine) == 1, records
    record = mine[0]
    assert record["MESSAGE"] == f"routed {marker}"
    assert record["MUSHISHI_TIER"] == "T1"
    assert record["MUSHISHI_BACKEND"] == "cpu"
    assert record["SYSLOG_IDENTIFIER"] == "mushishi-journal-probe"
    assert record["PRIORITY"] == "6"
    assert record["_SYSTEMD_UNIT"] == f"journal-probe-{marker[:8]}.service"
    # The record without the field is not matched by the filter.
    assert not any(f"unrelated {marker}" in r.get("MESSAGE", "") for r in records)
