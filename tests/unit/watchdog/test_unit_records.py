"""Which journal records a failure alert may carry, decided by what a record is (the fields
journald and mushishi's handler set), never by what it says."""

from __future__ import annotations

from datetime import UTC
from typing import Any

import pytest

from mushishi.services.watchdog.unit_records import alert_lines, journalctl_argv, render

UNIT = "mushishi-cpu-floor.service"
MARKER = "t1-prompt-5f1c"
TIME = str(1_773_133_200 * 1_000_000)  # 2026-03-10T09:00:00Z


def systemd(message: str, **extra: Any) -> dict[str, Any]:
    return {"__REALTIME_TIMESTAMP": TIME, "_PID": "1", "_TRANSPORT": "journal",
            "SYSLOG_IDENTIFIER": "systemd", "UNIT": UNIT, "MESSAGE": message, **extra}


def mushishi(redacted: str, message: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"__REALTIME_TIMESTAMP": TIME, "_PID": "4242", "_TRANSPORT": "journal",
            "_SYSTEMD_UNIT": UNIT, "SYSLOG_IDENTIFIER": "mushishi-cpu-floor",
            "LOGGER": "mushishi.cpu_floor", "PRIORITY": "3",
            "MESSAGE": message if message is not None else redacted,
            "MUSHISHI_REDACTED": redacted, **extra}


def test_systemd_records_are_carried_with_their_message() -> None:
    line = render(systemd(f"{UNIT}: Main process exited, code=exited, status=3/NOTIMPLEMENTED"),
                  UNIT, UTC)
    assert line == ("2026-03-10T09:00:00+00:00 systemd: mushishi-cpu-floor.service: Main "
                    "process exited, code=exited, status=3/NOTIMPLEMENTED")


def test_a_mushishi_record_is_carried_redacted_never_its_message() -> None:
    entry = mushishi("backend … answered 500: …",
                     message=f"backend gpu answered 500: {MARKER}",
                     MUSHISHI_FAILURE="backend_5xx", MUSHISHI_BACKEND="gpu")
    line = render(entry, UNIT, UTC)
    assert line == ("2026-03-10T09:00:00+00:00 mushishi.cpu_floor error: backend … answered "
                    "500: … [backend=gpu failure=backend_5xx]")


@pytest.mark.parametrize(("name", "entry"), [
    ("a child's stdout", {**mushishi("x"), "_TRANSPORT": "stdout",
                          "SYSLOG_IDENTIFIER": "llama-server"}),
    ("stdout even under our identifier", {**mushishi(MARKER), "_TRANSPORT": "stdout"}),
    ("syslog", {**mushishi(MARKER), "_TRANSPORT": "syslog"}),
    ("another library's logger", {**mushishi(MARKER), "LOGGER": "aiohttp.server"}),
    ("a logger that only starts like ours", {**mushishi(MARKER), "LOGGER": "mushishi_x"}),
    ("another identifier", {**mushishi(MARKER), "SYSLOG_IDENTIFIER": "vllm"}),
    ("another unit's record", {**mushishi(MARKER), "_SYSTEMD_UNIT": "other.service"}),
    ("no redacted field (not our handler)",
     {k: v for k, v in mushishi(MARKER).items() if k != "MUSHISHI_REDACTED"}),
    ("systemd's name but not PID 1", {**systemd(MARKER), "_PID": "77"}),
    ("PID 1 but through stdout", {**systemd(MARKER), "_TRANSPORT": "stdout"}),
    ("a binary field", {**mushishi("x"), "_TRANSPORT": [106, 111]}),
])
def test_records_that_are_not_systemd_or_mushishi_are_left_out(name: str,
                                                               entry: dict[str, Any]) -> None:
    assert render(entry, UNIT, UTC) is None, name


def test_field_values_that_are_not_plain_tokens_are_withheld() -> None:
    entry = mushishi("x", MUSHISHI_OUTCOME=f"failed: {MARKER} and more",
                     MUSHISHI_PROFILE="private", MUSHISHI_PROMPT_TOKENS="12",
                     MUSHISHI_COMPLETION=MARKER)
    line = render(entry, UNIT, UTC)
    assert line is not None and MARKER not in line
    assert line.endswith("[profile=private outcome=…]")


def test_long_messages_are_cut() -> None:
    line = render(systemd("x" * 1000), UNIT, UTC)
    assert line is not None and len(line) < 300 and line.endswith("…")
    line = render(mushishi("y" * 1000), UNIT, UTC)
    assert line is not None and len(line) < 330 and line.endswith("…")


def test_alert_lines_keep_the_newest_selected_records() -> None:
    entries = [systemd(f"{UNIT}: Started."), {**mushishi(MARKER), "_TRANSPORT": "stdout"},
               mushishi("model loaded in 3.2 s"), systemd(f"{UNIT}: Failed with result "
                                                          "'exit-code'.")]
    lines = alert_lines(entries, UNIT, 2, UTC)
    assert [line.split(" ", 1)[1] for line in lines] == [
        "mushishi.cpu_floor error: model loaded in 3.2 s",
        f"systemd: {UNIT}: Failed with result 'exit-code'."]
    assert alert_lines(entries, UNIT, 0, UTC) == []


def test_journalctl_reads_only_the_candidates() -> None:
    assert journalctl_argv("/usr/bin/journalctl", UNIT, 30)[-6:] == [
        "--lines=30", f"_SYSTEMD_UNIT={UNIT}", "_TRANSPORT=journal", "+", "_PID=1",
        f"UNIT={UNIT}"]
