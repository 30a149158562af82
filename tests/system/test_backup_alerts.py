"""Backups, the watchdog and immediate alerts in a real, booted systemd.

The units are the shipped ones, hardened, installed by `mushishi install`; restic is real;
ntfy is the stand-in (tests/standins/ntfy.py), started for real inside the sandbox's
network namespace. The router, gpud, CPU floor and tenants are stand-ins (`sleep`) so the
mode targets can be isolated; everything mushishi-backup, -watchdog and -alert do is real.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from devtools.sandbox import Sandbox
from tests.paths import BINDIR, EXAMPLE_CONFIG, REPO
from tests.system.stack import STANDIN

MODES = ["forensic", "agent", "creative", "audio", "off"]
TOPIC = "mushishi-sandbox-topic"
PASSWORD = "sandbox restic password"


class Box:
    """The sandbox, its ntfy stand-in and what that stand-in received."""

    def __init__(self, sandbox: Sandbox, record: Path, port: int) -> None:
        self.sandbox = sandbox
        self.record = record
        self.port = port

    def received(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines() if line]

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(r["body"]) for r in self.received() if r["path"] == "/"]

    def wait_for_message(self, title: str, timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.messages():
                if message.get("title") == title:
                    return message
            time.sleep(0.2)
        titles = [m.get("title") for m in self.messages()]
        raise AssertionError(f"no ntfy message {title!r} within {timeout}s; got {titles}")

    def json(self, inside: str) -> dict[str, Any]:
        return json.loads(self.sandbox.path(inside).read_text())


def config_text(port: int) -> str:
    document = tomlkit.parse(EXAMPLE_CONFIG.read_text())
    document["gpu"]["probe"] = "simulated"
    document["ntfy"]["url"] = f"http://127.0.0.1:{port}"
    document["watchdog"]["disk_mounts"] = ["/"]
    backup = document["backup"]
    backup["repository"] = "/var/lib/mushishi/restic-repo"
    backup["check_read_data_subset"] = "100%"
    sets = tomlkit.aot()
    for path, reason, exclude in (
            ("/srv/precious", "client deliverables", ["/srv/precious/cache"]),
            ("/etc/mushishi", "this control plane's config", [])):
        table = tomlkit.table()
        table["path"], table["reason"], table["exclude"] = path, reason, exclude
        sets.append(table)
    backup["sets"] = sets
    return tomlkit.dumps(document)


@pytest.fixture(scope="module")
def box() -> Iterator[Box]:
    sandbox = Sandbox()
    sandbox.boot()
    ntfy: subprocess.Popen[bytes] | None = None
    try:
        port_file = sandbox.shared / "ntfy.port"
        record = sandbox.shared / "ntfy.jsonl"
        ntfy = subprocess.Popen(
            sandbox.net_command([sys.executable, "-m", "tests.standins.ntfy", "--port-file",
                                 str(port_file), "--record", str(record)]), cwd=REPO)
        deadline = time.monotonic() + 30
        while not port_file.exists() and time.monotonic() < deadline:
            assert ntfy.poll() is None, "the ntfy stand-in died"
            time.sleep(0.05)
        port = int(port_file.read_text())
        for unit in ("mushishi-tenant@", "mushishi-router", "mushishi-gpud",
                     "mushishi-cpu-floor", "mushishi-egress"):
            sandbox.write(f"/etc/systemd/system/{unit}.service.d/zz-standin.conf", STANDIN)
        sandbox.run(["mkdir", "-p", "/srv/precious/cache", "/srv/precious/reports"])
        sandbox.run(["dd", "if=/dev/urandom", "of=/srv/precious/reports/report.bin",
                     "bs=64k", "count=4", "status=none"])
        sandbox.write("/srv/precious/reports/summary.md", "# findings\n")
        sandbox.write("/srv/precious/cache/tmp.bin", "cache, excluded\n")
        sandbox.write("/srv/precious/owned-by-mushishi.txt", "private notes\n", mode=0o600)
        sandbox.run(["chown", "mushishi:mushishi", "/srv/precious/owned-by-mushishi.txt"],
                    check=False)
        sandbox.install(config_text(port), credentials={"restic-password": PASSWORD,
                                                        "ntfy-topic": TOPIC})
        sandbox.run(["chown", "mushishi:mushishi", "/srv/precious/owned-by-mushishi.txt"])
        sandbox.systemctl("start", "mushishi.target")
        yield Box(sandbox, record, port)
    finally:
        if ntfy is not None:
            ntfy.terminate()
            ntfy.wait(timeout=10)
        sandbox.stop()


def test_timers_are_installed_persistent_and_started_by_mushishi_target(box: Box) -> None:
    expected = {"mushishi-watchdog.timer": "mushishi-watchdog.service",
                "mushishi-backup.timer": "mushishi-backup.service",
                "mushishi-backup-check.timer": "mushishi-backup-check.service"}
    for timer, service in expected.items():
        shown = box.sandbox.systemctl("show", timer, "-p", "Persistent", "-p", "Unit",
                                      "-p", "ActiveState").stdout
        assert "Persistent=yes" in shown, timer
        assert f"Unit={service}" in shown and "ActiveState=active" in shown, timer
        assert box.sandbox.systemctl("show", timer, "-p", "NextElapseUSecRealtime",
                                     "--value").stdout.strip(), timer


def test_backup_check_and_watchdog_run_hardened_under_systemd(box: Box) -> None:
    sandbox = box.sandbox
    sandbox.systemctl("start", "mushishi-backup.service", timeout=600)
    last = box.json("/var/lib/mushishi/backup/last.json")
    assert last["outcome"] == "ok", last
    assert [s["status"] for s in last["sets"]] == ["ok", "ok"]
    # The restore sample went through the hardened unit: owners and times restored.
    assert last["verify"]["outcome"] == "ok", last["verify"]
    assert last["verify"]["files_matched"] >= 4
    metrics = sandbox.path("/var/lib/prometheus/node-exporter/mushishi_backup.prom").read_text()
    assert 'mushishi_backup_outcome{outcome="ok"} 1.0' in metrics
    status = sandbox.systemctl("show", "mushishi-backup.service", "-p", "StatusText",
                               "--value").stdout
    assert status.startswith("backup ok: 2 snapshot(s)")

    sandbox.systemctl("start", "mushishi-backup-check.service", timeout=600)
    assert box.json("/var/lib/mushishi/backup/check.json")["outcome"] == "ok"

    # The watchdog runs as user mushishi: restic reads the group-readable repository, the
    # units are read from the real systemd over D-Bus.
    sandbox.systemctl("start", "mushishi-watchdog.service", timeout=600)
    result = box.json("/var/lib/mushishi/watchdog/last.json")
    checks = {c["name"]: c for c in result["checks"]}
    assert checks["backup-age"]["status"] == "ok", checks["backup-age"]
    assert checks["backup-result"]["status"] == "ok"
    assert checks["restore-verify"]["status"] == "ok"
    assert checks["backup-check"]["status"] == "ok"
    assert checks["disk:/"]["status"] in ("ok", "problem")
    for unit in ("mushishi-router.service", "mushishi-cpu-floor.service",
                 "mushishi-gpud.service"):
        assert checks[f"unit:{unit}"]["status"] == "ok", checks[f"unit:{unit}"]
    # The floor stand-in is a `sleep`: its unit is active but no alias answers.
    assert checks["cpu-floor"]["status"] == "problem"
    assert checks["gpu"]["status"] == "missing-source"
    assert checks["bench"]["status"] == "missing-source"
    heartbeat = box.wait_for_message("mushishi on mushishi-sandbox: weekly heartbeat")
    assert heartbeat["topic"] == TOPIC
    problems = [m for m in box.messages() if m["title"].endswith("problem") or
                m["title"].endswith("problems")]
    assert problems and "**cpu-floor**" in problems[-1]["message"]


def test_backup_in_progress_survives_isolating_every_mode_target(box: Box) -> None:
    sandbox = box.sandbox
    # New data, uploaded slowly, so the backup is still running through five isolates.
    sandbox.run(["dd", "if=/dev/urandom", "of=/srv/precious/reports/large.bin", "bs=64k",
                 "count=96", "status=none"])
    sandbox.write("/etc/systemd/system/mushishi-backup.service.d/zz-slow.conf",
                  "[Service]\nEnvironment=MUSHISHI_BACKUP__LIMIT_UPLOAD_KIB=128\n")
    sandbox.systemctl("daemon-reload")
    try:
        sandbox.systemctl("start", "--no-block", "mushishi-backup.service")
        sandbox.wait_for("mushishi-backup.service", "activating", timeout=30)
        pid = sandbox.systemctl("show", "-p", "MainPID", "--value",
                                "mushishi-backup.service").stdout.strip()
        for mode in MODES:
            sandbox.systemctl("isolate", f"mushishi-{mode}.target", timeout=120)
            assert sandbox.is_active(f"mushishi-{mode}.target") == "active"
            assert sandbox.is_active("mushishi-backup.service") == "activating", mode
            assert sandbox.systemctl("show", "-p", "MainPID", "--value",
                                     "mushishi-backup.service").stdout.strip() == pid, mode
        sandbox.wait_for("mushishi-backup.service", "inactive", timeout=300)
    finally:
        sandbox.run(["rm", "-f", "/etc/systemd/system/mushishi-backup.service.d/zz-slow.conf"])
        sandbox.systemctl("daemon-reload")
    last = box.json("/var/lib/mushishi/backup/last.json")
    assert last["outcome"] == "ok", last
    assert last["verify"]["outcome"] == "ok"
    assert last["duration_s"] > 5


# A mushishi record that quotes a backend's answer (as the router's logs of a 5xx body do),
# written through mushishi's own journal handler from inside the failing unit.
QUOTING_RECORD = """import logging, sys
from mushishi.shared.journal import setup_logging
setup_logging(sys.argv[1])
logging.getLogger(sys.argv[2]).error(
    "backend answered %d: %s", 500, sys.argv[3],
    extra={"MUSHISHI_FAILURE": "backend_5xx", "MUSHISHI_BACKEND": "gpu"})
"""
QUOTER = "/usr/local/lib/mushishi-test/quote.py"
UNREACHABLE_NTFY = ("[Service]\n# Test only: keep the alert in the outbox.\n"
                    "Environment=MUSHISHI_NTFY__URL=http://127.0.0.1:9\n")


def wait_status(sandbox: Sandbox, unit: str, prefix: str, timeout: float = 90) -> str:
    """The unit's StatusText once it starts with `prefix`."""
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = sandbox.systemctl("show", unit, "-p", "StatusText", "--value").stdout.strip()
        if status.startswith(prefix) and sandbox.is_active(unit) != "activating":
            return status
        time.sleep(0.2)
    raise AssertionError(f"{unit}: StatusText {status!r}, not {prefix!r}…, after {timeout}s")


# The alert instance is the failed unit's name without `.service` (OnFailure=…@%N.service).
@pytest.mark.parametrize(("unit", "alert_unit", "logger"), [
    ("mushishi-cpu-floor.service", "mushishi-alert@mushishi-cpu-floor.service",
     "mushishi.cpu_floor"),
    ("mushishi-tenant@vllm-agent.service", "mushishi-alert@mushishi-tenant@vllm-agent.service",
     "mushishi.tenant"),
])
def test_failure_alert_carries_systemd_and_mushishi_records_never_a_childs_output(
        box: Box, unit: str, alert_unit: str, logger: str) -> None:
    """The unit's child prints a T1-like prompt marker to stdout and a mushishi record quotes
    it: the alert (queued on disk, then delivered) names the unit, its result and exit
    status, carries mushishi's own record without the quote, and never the marker."""
    sandbox = box.sandbox
    assert sandbox.systemctl("show", unit, "-p", "OnFailure", "--value"
                             ).stdout.strip() == alert_unit
    marker = f"t1-prompt-{secrets.token_hex(8)}"
    sandbox.write(QUOTER, QUOTING_RECORD)
    template = unit.split("@")[0] + "@" if "@" in unit else unit.removesuffix(".service")
    identifier = template.rstrip("@")
    dropin = f"/etc/systemd/system/{template}.service.d/zzz-fail.conf"  # after zz-standin
    sandbox.write(dropin, "[Service]\nType=simple\nRestart=no\nExecStart=\nExecStart=/bin/sh "
                  f"-c 'echo \"user: summarise {marker}\"; {BINDIR}/python {QUOTER} "
                  f"{identifier} {logger} \"upstream said: {marker}\"; exit 3'\n")
    unreachable = "/etc/systemd/system/mushishi-alert@.service.d/zzz-unreachable.conf"
    sandbox.write(unreachable, UNREACHABLE_NTFY)
    sandbox.systemctl("daemon-reload")
    title = f"mushishi on mushishi-sandbox: {unit} failed"
    try:
        sandbox.systemctl("restart", unit, check=False)
        sandbox.wait_for(unit, "failed", timeout=60)
        # The marker did reach the unit's journal, by both routes.
        journal = sandbox.journal("-u", unit, "-o", "cat")
        assert f"user: summarise {marker}" in journal
        assert f"backend answered 500: upstream said: {marker}" in journal
        # ntfy unreachable: the alert waits in the outbox, on disk.
        assert wait_status(sandbox, alert_unit, "0 delivered") != ""
        outbox = sandbox.path("/var/lib/mushishi/watchdog/outbox")
        queued = [json.loads(path.read_text()) for path in sorted(outbox.glob("*.json"))]
        queued = [item for item in queued if json.dumps(item).find(title) >= 0]
        assert len(queued) == 1, queued
        on_disk = json.dumps(queued[0])
        # ntfy back: the next alert run delivers the queue (the unit itself is not repeated).
        sandbox.run(["rm", "-f", unreachable])
        sandbox.systemctl("daemon-reload")
        sandbox.systemctl("start", alert_unit, timeout=120)
        message = box.wait_for_message(title)
        # Its STATUS= line reached systemd (a oneshot needs NotifyAccess= and a barrier
        # before it exits). Read while the failed unit is still loaded: once it is reset,
        # systemd may unload both, and an unloaded unit shows an empty StatusText.
        started = sandbox.systemctl("list-units", "--all", "--plain", "--no-legend",
                                    "mushishi-alert@*").stdout
        assert alert_unit in started.split()
        assert ".service.service" not in started, started
        assert wait_status(sandbox, alert_unit, "1 delivered") == "1 delivered, 0 queued"
    finally:
        sandbox.run(["rm", "-f", dropin, unreachable])
        sandbox.systemctl("daemon-reload")
        sandbox.systemctl("reset-failed", unit, check=False)
    assert message["topic"] == TOPIC and message["priority"] == 4
    assert message["tags"] == ["rotating_light"] and message["markdown"] is True
    body = message["message"]
    # Never the marker: not in the bytes ntfy received, not in any file the alert wrote.
    raw = [r["body"] for r in box.received()]
    assert raw and not any(marker in received for received in raw)
    assert marker not in on_disk
    leaked = sandbox.run(["grep", "-rl", marker, "/var/lib/mushishi/watchdog"], check=False)
    assert leaked.returncode == 1, leaked.stdout
    for text in (body, on_disk):
        # The unit, its result and exit status, from systemd's D-Bus API and its own records.
        assert unit in text
        assert "result exit-code" in text and "main process exited with status 3" in text
        assert "Failed with result 'exit-code'" in text
        assert "status=3/NOTIMPLEMENTED" in text
        # mushishi's own record: its kind and structured fields, never its quote.
        assert "backend answered 500" in text and "backend_5xx" in text
    assert sandbox.systemctl("show", alert_unit, "-p", "Result", "--value"
                             ).stdout.strip() == "success"
