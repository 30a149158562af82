"""mushishi-cpu-floor.service in a booted systemd, with a real llama-server and tiny model.

Readiness ordering, the watchdog on a wedged (SIGSTOPped) llama-server, recovery from a
killed one, and the four refusals (wrong alias, missing model, missing binary, not enough
RAM), each visible in `systemctl status` and never READY. Intervals are shortened through
the config and a drop-in; the shipped defaults are tested in tests/unit.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomlkit

from devtools.sandbox import Sandbox
from tests.paths import EXAMPLE_CONFIG

UNIT = "mushishi-cpu-floor.service"
MODELS = "/var/lib/mushishi/models"
MODEL = f"{MODELS}/tiny.gguf"
ALIAS = "nemotron-cpu-prism"
PORT = 8001
METRICS = "http://127.0.0.1:9643/metrics"
WATCHDOG_S = 4
RESTART_S = 1
# systemd runs ExecStopPost= (a Python process) between the kill and RestartSec=; on this
# shared 2-core machine that and the scheduling take a few seconds at worst.
SLACK_S = 5
FAST = f"[Service]\nWatchdogSec={WATCHDOG_S}\nRestartSec={RESTART_S}\n"
TOOLS = "/usr/local/lib/mushishi-test"

# A llama-server build that ignores --alias and serves the model under its file name,
# as the seed box's once did.
NO_ALIAS = """#!/bin/sh
skip=0
for arg do
    shift
    if [ "$skip" = 1 ]; then skip=0; continue; fi
    if [ "$arg" = "--alias" ]; then skip=1; continue; fi
    set -- "$@" "$arg"
done
exec {real} "$@"
"""
# A llama-server whose start takes two seconds before it listens, like a big model.
SLOW = "#!/bin/sh\n[ \"$1\" = --help ] || sleep 2\nexec {real} \"$@\"\n"


def floor_config(binary: str, **overrides: object) -> str:
    """The example config with a tiny, fast-checking floor."""
    doc = tomlkit.parse(EXAMPLE_CONFIG.read_text())
    floor = doc["cpu_floor"]
    floor.update({
        "llama_server": binary, "model": MODEL, "alias": ALIAS, "port": PORT,
        "threads": 1, "ctx_size": 512, "mlock": True,
        "check_interval_s": 0.5, "check_timeout_s": 1.0,
        "smoke_interval_s": 1.0, "smoke_timeout_s": 2.0,
        "restart_backoff_base_s": 1.0, "restart_backoff_max_s": 2.0, "load_timeout_s": 60.0,
    })
    floor.update(overrides)
    return tomlkit.dumps(doc)


class Floor:
    """The floor unit in a sandbox, with the few probes these tests need."""

    def __init__(self, box: Sandbox, binary: Path) -> None:
        self.box = box
        self.binary = str(binary)

    def configure(self, **overrides: object) -> None:
        self.box.write("/etc/mushishi/mushishi.toml", floor_config(self.binary, **overrides))

    def show(self, *properties: str) -> dict[str, str]:
        args = [arg for p in properties for arg in ("-p", p)]
        output = self.box.systemctl("show", UNIT, *args).stdout
        return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)

    def monotonic(self, prop: str) -> float:
        return int(self.show(prop)[prop]) / 1_000_000

    def start(self) -> None:
        self.box.systemctl("start", "--no-block", UNIT)

    def wait_active(self, timeout: float = 60) -> None:
        self.box.wait_for(UNIT, "active", timeout=timeout)

    def child_pid(self) -> int:
        main = self.show("MainPID")["MainPID"]
        children = self.box.run(["cat", f"/proc/{main}/task/{main}/children"]).stdout.split()
        names = {pid: self.box.run(["cat", f"/proc/{pid}/comm"], check=False).stdout.strip()
                 for pid in children}
        pids = [int(pid) for pid, name in names.items() if name == "llama-server"]
        assert len(pids) == 1, f"llama-server children of {main}: {names}"
        return pids[0]

    def alive(self, pid: int) -> bool:
        return self.box.run(["kill", "-0", str(pid)], check=False).returncode == 0

    def models(self) -> list[str]:
        answer = self.box.run(["curl", "-sS", "--fail", "--max-time", "5",
                               f"http://127.0.0.1:{PORT}/v1/models"]).stdout
        return [entry["id"] for entry in json.loads(answer)["data"]]

    def metrics(self) -> dict[str, float]:
        text = self.box.run(["curl", "-sS", "--fail", "--max-time", "5", METRICS]).stdout
        values = {}
        for line in text.splitlines():
            if line.startswith("mushishi_cpu_floor_"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def status(self) -> str:
        return self.box.systemctl("status", "--lines=40", UNIT, check=False).stdout

    def floor_journal(self) -> str:
        return self.box.journal("-u", UNIT, "-o", "cat")

    def wait_restarted(self, previous_restarts: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            shown = self.show("NRestarts", "ActiveState", "SubState")
            if int(shown["NRestarts"]) > previous_restarts and shown["ActiveState"] == "active":
                return
            time.sleep(0.1)
        raise AssertionError(f"{UNIT} did not restart and become active in {timeout} s:\n"
                             f"{self.status()}\n{self.floor_journal()[-3000:]}")

    def tool(self, name: str, template: str) -> str:
        path = f"{TOOLS}/{name}"
        self.box.write(path, template.format(real=self.binary), mode=0o755)
        return path


@pytest.fixture(scope="module")
def floor_box(llama_server_binary: Path, tiny_model: Path) -> Iterator[Sandbox]:
    box = Sandbox()
    box.boot()
    try:
        box.install(floor_config(str(llama_server_binary)))
        models = box.path(MODELS)
        models.mkdir(parents=True, exist_ok=True)
        models.chmod(0o755)
        shutil.copyfile(tiny_model, models / "tiny.gguf")
        (models / "tiny.gguf").chmod(0o644)
        box.write(f"/etc/systemd/system/{UNIT}.d/zz-fast.conf", FAST)
        box.systemctl("daemon-reload")
        yield box
    finally:
        box.stop()


@pytest.fixture
def floor(floor_box: Sandbox, llama_server_binary: Path) -> Iterator[Floor]:
    """The floor, stopped, with the test config and no restart history."""
    handle = Floor(floor_box, llama_server_binary)
    handle.configure()
    yield handle
    floor_box.systemctl("stop", UNIT, "floor-consumer.service", check=False)
    floor_box.systemctl("reset-failed", UNIT, check=False)
    floor_box.run(["rm", "-f", "/var/lib/mushishi/cpu-floor/restarts.json"])


def test_unit_ordered_after_the_floor_starts_only_once_the_alias_answers(floor: Floor) -> None:
    floor.configure(llama_server=floor.tool("slow-llama-server", SLOW))
    consumer = textwrap.dedent("""\
        [Unit]
        Wants={floor}
        After={floor}
        [Service]
        Type=oneshot
        RemainAfterExit=yes
        ExecStart=/usr/bin/curl -sS --fail --max-time 5 -o /run/{name}.json \\
            http://127.0.0.1:{port}/v1/models
        """)
    floor.box.write("/etc/systemd/system/floor-consumer.service",
                    consumer.format(floor=UNIT, name="floor-consumer", port=PORT))
    # The control: the same slow llama-server under a plain Type=simple unit. A consumer
    # ordered after it starts at once and finds nothing listening, so ordering alone
    # proves nothing; READY=1 from the floor is what makes the difference.
    floor.box.write("/etc/systemd/system/plain-llama.service", textwrap.dedent(f"""\
        [Service]
        Type=simple
        ExecStart={TOOLS}/slow-llama-server --model {MODEL} --port 18001 --host 127.0.0.1
        """))
    floor.box.write("/etc/systemd/system/plain-consumer.service",
                    consumer.format(floor="plain-llama.service", name="plain-consumer",
                                    port=18001))
    floor.box.systemctl("daemon-reload")
    try:
        control = floor.box.systemctl("start", "plain-consumer.service", check=False)
        assert control.returncode != 0, "the control consumer should find no server yet"

        floor.box.systemctl("start", "floor-consumer.service", timeout=120)
        answer = json.loads(floor.box.run(["cat", "/run/floor-consumer.json"]).stdout)
        assert [entry["id"] for entry in answer["data"]] == [ALIAS]
        consumer_started = int(floor.box.systemctl(
            "show", "-p", "ExecMainStartTimestampMonotonic", "--value",
            "floor-consumer.service").stdout)
        floor_ready = int(floor.show("ActiveEnterTimestampMonotonic")[
            "ActiveEnterTimestampMonotonic"])
        assert 0 < floor_ready <= consumer_started
        assert floor.monotonic("ActiveEnterTimestampMonotonic") - floor.monotonic(
            "ExecMainStartTimestampMonotonic") >= 2.0  # the slow start was waited for
        assert "Status: \"serving nemotron-cpu-prism on 127.0.0.1:8001" in floor.status()
    finally:
        floor.box.systemctl("stop", "plain-consumer.service", "plain-llama.service",
                            check=False)


def test_healthy_floor_keeps_the_watchdog_fed_serves_openai_chat_and_exports_metrics(
        floor: Floor) -> None:
    floor.start()
    floor.wait_active()
    time.sleep(2.5 * WATCHDOG_S)  # several watchdog periods without a restart
    shown = floor.show("NRestarts", "ActiveState", "WatchdogUSec")
    assert shown["ActiveState"] == "active" and shown["NRestarts"] == "0"
    assert shown["WatchdogUSec"] == f"{WATCHDOG_S}s"

    # The router will use the OpenAI chat API: the official client, from the host, in the
    # sandbox's network namespace.
    script = textwrap.dedent(f"""\
        import openai
        client = openai.OpenAI(base_url="http://127.0.0.1:{PORT}/v1", api_key="none")
        answer = client.chat.completions.create(
            model="{ALIAS}", messages=[{{"role": "user", "content": "hello"}}], max_tokens=8)
        print(answer.model, answer.usage.completion_tokens, answer.choices[0].finish_reason)
        chunks = list(client.chat.completions.create(
            model="{ALIAS}", messages=[{{"role": "user", "content": "hello"}}], max_tokens=8,
            stream=True))
        print(len([c for c in chunks if c.choices and c.choices[0].delta.content]))
        """)
    result = subprocess.run(floor.box.net_command([sys.executable, "-c", script]),
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.split("\n")[:2]
    assert first.split()[0] == ALIAS and int(first.split()[1]) >= 1
    assert int(second) >= 1  # streamed content arrived in chunks

    values = floor.metrics()
    assert values["mushishi_cpu_floor_up"] == 1
    assert values["mushishi_cpu_floor_health_latency_seconds_count"] >= 10
    assert values['mushishi_cpu_floor_health_checks_total{result="ok"}'] >= 10
    assert values["mushishi_cpu_floor_smoke_latency_seconds_count"] >= 3
    assert values['mushishi_cpu_floor_smoke_completions_total{result="ok"}'] >= 3
    assert values["mushishi_cpu_floor_smoke_tokens_per_second"] > 0
    assert 0 < values["mushishi_cpu_floor_load_seconds"] < 60

    floor.box.systemctl("stop", UNIT)
    assert floor.box.is_active(UNIT) == "inactive"  # a requested stop is not a failure
    assert "the CPU floor stopped: stopped on request" in floor.floor_journal()


def test_wedged_llama_server_is_killed_by_the_watchdog_and_the_floor_comes_back(
        floor: Floor) -> None:
    floor.start()
    floor.wait_active()
    old_main = floor.show("MainPID")["MainPID"]
    child = floor.child_pid()
    wedged_at = time.monotonic()  # CLOCK_MONOTONIC, as systemd's *Monotonic timestamps
    floor.box.run(["kill", "-STOP", str(child)])

    floor.wait_restarted(0, timeout=WATCHDOG_S + RESTART_S + 60)
    restarted_after = floor.monotonic("ExecMainStartTimestampMonotonic") - wedged_at
    assert WATCHDOG_S - 1.5 <= restarted_after <= WATCHDOG_S + RESTART_S + SLACK_S, (
        f"restarted {restarted_after:.1f} s after the wedge")
    assert floor.show("MainPID")["MainPID"] != old_main
    assert not floor.alive(child), "the wedged llama-server must be gone"
    assert ALIAS in floor.models()

    journal = floor.floor_journal()
    assert f"Watchdog timeout (limit {WATCHDOG_S}s)!" in journal
    assert "UNHEALTHY, watchdog not pinged: /health timed out" in journal
    assert "the CPU floor stopped unexpectedly: the watchdog fired" in journal
    values = floor.metrics()
    assert values['mushishi_cpu_floor_restarts_total{reason="watchdog"}'] == 1
    assert values["mushishi_cpu_floor_up"] == 1


def test_killed_llama_server_is_restarted_counted_and_logged(floor: Floor) -> None:
    floor.start()
    floor.wait_active()
    child = floor.child_pid()
    killed_at = time.monotonic()
    floor.box.run(["kill", "-KILL", str(child)])

    floor.wait_restarted(0)
    assert floor.monotonic("ExecMainStartTimestampMonotonic") - killed_at <= (
        RESTART_S + SLACK_S)
    assert floor.child_pid() != child
    assert ALIAS in floor.models()
    values = floor.metrics()
    assert values['mushishi_cpu_floor_restarts_total{reason="llama-server-exited"}'] == 1
    journal = floor.floor_journal()
    assert "llama-server was killed by SIGKILL while serving; systemd restarts the floor" \
        in journal
    assert ("the CPU floor stopped unexpectedly: llama-server exited on its own "
            "(SERVICE_RESULT=exit-code EXIT_CODE=exited EXIT_STATUS=70); restart 1") in journal
    assert "starting again after an unexpected stop (llama-server-exited" in journal


def assert_refused(floor: Floor, reason: str, *, restarts: bool) -> None:
    """Start the floor; it must fail with `reason` in `systemctl status`, never active."""
    never = floor.show("ActiveEnterTimestampMonotonic")["ActiveEnterTimestampMonotonic"]
    floor.start()
    deadline = time.monotonic() + 60
    status = ""
    while time.monotonic() < deadline:
        # A restarting unit shows its reason between runs (auto-restart), not in the first
        # milliseconds of the next run: look until both hold at once.
        status = floor.status()
        shown = floor.show("NRestarts", "ActiveState")
        settled = (int(shown["NRestarts"]) >= 2 if restarts
                   else shown["ActiveState"] == "failed")
        if f'Status: "{reason}' in status and settled:
            break
        time.sleep(0.1)
    assert f'Status: "{reason}' in status, status
    assert reason in floor.floor_journal()
    shown = floor.show("ActiveEnterTimestampMonotonic", "NRestarts", "ActiveState")
    assert shown["ActiveEnterTimestampMonotonic"] == never, "the floor must never be READY"
    assert shown["ActiveState"] != "active"
    if not restarts:
        assert shown["NRestarts"] == "0" and shown["ActiveState"] == "failed"


def test_wrong_alias_fails_with_its_reason_and_is_not_restarted(floor: Floor) -> None:
    floor.configure(llama_server=floor.tool("llama-server-without-alias", NO_ALIAS))
    assert_refused(floor, f"llama-server serves '{MODEL}', not the alias "
                          f"'{ALIAS}' that backend chains refer to", restarts=False)


def test_missing_model_fails_with_its_reason(floor: Floor) -> None:
    floor.configure(model=f"{MODELS}/absent.gguf")
    assert_refused(floor, f"cpu_floor.model: {MODELS}/absent.gguf does not exist",
                   restarts=False)


def test_missing_binary_fails_with_its_reason(floor: Floor) -> None:
    floor.configure(llama_server="/opt/llama.cpp/llama-server")
    assert_refused(floor, "cpu_floor.llama_server: /opt/llama.cpp/llama-server does not exist",
                   restarts=False)


def test_not_enough_ram_fails_with_its_reason_and_keeps_retrying(floor: Floor) -> None:
    # A 1 TiB model (sparse): no machine running these tests has that much RAM available.
    huge = floor.box.path(f"{MODELS}/huge.gguf")
    with huge.open("wb") as handle:
        handle.write(b"GGUF")
        handle.truncate(1 << 40)
    huge.chmod(0o644)
    try:
        floor.configure(model=f"{MODELS}/huge.gguf")
        never = floor.show("ActiveEnterTimestampMonotonic")
        assert_refused(floor, "not enough RAM for the CPU floor: the model needs 1.0 TiB "
                              "(1.0 TiB + cpu_floor.ram_headroom_mib 1024 MiB)", restarts=True)
        # RAM may come back (a GPU tenant ends), so systemd retries, with the supervisor's
        # growing delay, until StartLimitBurst=; then the floor fails and alerts.
        floor.box.wait_for(UNIT, "failed", timeout=120)
        assert 'Status: "not enough RAM for the CPU floor' in floor.status()
        assert floor.show("ActiveEnterTimestampMonotonic") == never  # never READY
        journal = floor.floor_journal()
        assert "Start request repeated too quickly." in journal
        assert "Triggering OnFailure= dependencies." in journal
        assert "waiting 1 s before starting llama-server again" in journal
    finally:
        huge.unlink()


def test_shipped_unit_keeps_sensible_defaults(floor_box: Sandbox) -> None:
    shown = floor_box.run(["systemctl", "show", UNIT, "-p", "Type", "-p", "Restart",
                           "-p", "NotifyAccess", "-p", "KillMode", "-p", "StateDirectory",
                           "-p", "RestartPreventExitStatus", "-p", "LimitMEMLOCK",
                           "-p", "User", "-p", "RequiresMountsFor", "--no-pager"]).stdout
    for expected in ("Type=notify", "Restart=always", "NotifyAccess=main", "KillMode=mixed",
                     "StateDirectory=mushishi/cpu-floor", "RestartPreventExitStatus=78",
                     "User=mushishi"):
        assert expected in shown
    # rendered by `mushishi install` from cpu_floor.model and cpu_floor.llama_server
    mounts = shown.split("RequiresMountsFor=", 1)[1].split("\n", 1)[0].split()
    assert {MODELS, "/var/cache/mushishi/llama-server-11434.0.0"} <= set(mounts)
    shipped = floor_box.run(["cat", f"/etc/systemd/system/{UNIT}"]).stdout
    assert "WatchdogSec=30\n" in shipped and "RestartSec=2\n" in shipped
    exposure = floor_box.run(["systemd-analyze", "security", UNIT], check=False).stdout
    level = float(exposure.rsplit("Overall exposure level for", 1)[1].split(":")[1].split()[0])
    assert level <= 2.0, exposure[-500:]
