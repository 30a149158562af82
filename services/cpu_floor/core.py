"""Decisions of the CPU floor, as pure functions over plain data.

What llama-server is started with, whether it is ready, whether the systemd watchdog may be
pinged, why the floor last stopped, and how long to wait before starting it again.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from mushishi.shared.config.cpu_floor import CpuFloorSettings
from mushishi.shared.formatting import human_bytes

# Exit statuses of the supervisor (sysexits.h), which its ExecStopPost= turns into reasons.
EXIT_CONFIG = 78       # a config key is wrong (missing binary or model, wrong alias): no restart
EXIT_UNAVAILABLE = 69  # the machine cannot host the floor right now (RAM, port): restart
EXIT_SOFTWARE = 70     # llama-server exited on its own: restart
EXIT_TEMPFAIL = 75     # llama-server loaded but failed its first smoke completion: restart

MIB = 1024 * 1024
GIB = 1024 * MIB


@dataclass(frozen=True)
class Capabilities:
    """What this llama-server build accepts, read from its --help (flags changed over time:
    `--mlock` became `--load-mode mmap+mlock`)."""

    mlock_args: tuple[str, ...] | None  # None: this build cannot lock the model in RAM
    metrics: bool                       # --metrics, for the token counters


MODERN = Capabilities(mlock_args=("--load-mode", "mmap+mlock"), metrics=True)


def parse_capabilities(help_text: str) -> Capabilities:
    """Capabilities from `llama-server --help` output."""
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", help_text))
    if "--mlock" in flags:
        mlock: tuple[str, ...] | None = ("--mlock",)
    elif "--load-mode" in flags and "mmap+mlock" in help_text:
        mlock = ("--load-mode", "mmap+mlock")
    else:
        mlock = None
    return Capabilities(mlock_args=mlock, metrics="--metrics" in flags)


def llama_server_argv(settings: CpuFloorSettings, capabilities: Capabilities = MODERN,
                      ) -> list[str]:
    """The llama-server command line for `settings` (extra_args last, verbatim)."""
    argv = [
        settings.llama_server,
        "--model", settings.model,
        "--alias", settings.alias,
        "--host", settings.host,
        "--port", str(settings.port),
        "--ctx-size", str(settings.ctx_size),
    ]
    if capabilities.metrics:
        argv.append("--metrics")  # token counters tell a busy server from a wedged one
    if settings.threads is not None:
        argv += ["--threads", str(settings.threads)]
    if settings.mlock and capabilities.mlock_args is not None:
        argv += capabilities.mlock_args
    return argv + list(settings.extra_args)


def capability_warnings(settings: CpuFloorSettings, capabilities: Capabilities) -> list[str]:
    """What the configured settings lose on this llama-server build."""
    warnings = []
    if settings.mlock and capabilities.mlock_args is None:
        warnings.append(f"{settings.llama_server} has neither --mlock nor --load-mode "
                        "mmap+mlock: cpu_floor.mlock is ignored and the model may be swapped out")
    if not capabilities.metrics:
        warnings.append(f"{settings.llama_server} has no --metrics: a smoke completion that "
                        "times out on a busy server counts as a failure")
    return warnings




# -- pre-start checks -------------------------------------------------------------------

@dataclass(frozen=True)
class Refusal:
    """Why the floor will not start, in one line, and the exit status that says so."""

    message: str
    exit_status: int


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo as bytes per field (`MemAvailable: 123 kB` -> 125952)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if not parts or not parts[0].isdigit():
            continue
        factor = 1024 if len(parts) > 1 and parts[1] == "kB" else 1
        values[name.strip()] = int(parts[0]) * factor
    return values


def ram_refusal(model_bytes: int, meminfo: Mapping[str, int], headroom_mib: int,
                ) -> Refusal | None:
    """Refuse when MemAvailable does not cover the model plus the configured headroom."""
    available = meminfo.get("MemAvailable")
    if available is None:
        return Refusal("cannot tell available RAM: /proc/meminfo has no MemAvailable",
                       EXIT_UNAVAILABLE)
    needed = model_bytes + headroom_mib * MIB
    if available >= needed:
        return None
    return Refusal(
        f"not enough RAM for the CPU floor: the model needs {human_bytes(needed)} "
        f"({human_bytes(model_bytes)} + cpu_floor.ram_headroom_mib {headroom_mib} MiB) "
        f"but only {human_bytes(available)} is available",
        EXIT_UNAVAILABLE,
    )


def memlock_warning(model_bytes: int, mlock: bool, memlock_limit: int | None) -> str | None:
    """A warning when --mlock cannot lock the model under the process's RLIMIT_MEMLOCK."""
    if not mlock or memlock_limit is None or memlock_limit >= model_bytes:
        return None
    return (f"cpu_floor.mlock is on but LimitMEMLOCK ({human_bytes(memlock_limit)}) is below "
            f"the model size ({human_bytes(model_bytes)}): the model may be swapped out; set "
            "LimitMEMLOCK=infinity in the unit or cpu_floor.mlock = false")


def hidden_path_hint(path: str) -> str:
    """Why an existing file may look missing from inside the hardened unit."""
    if path.startswith(("/home/", "/root/", "/run/user/")):
        return " (the unit runs with ProtectHome=yes, which hides /home, /root and /run/user)"
    if path.startswith("/tmp/"):  # noqa: S108 (a hint about PrivateTmp=, not a temp file)
        return " (the unit has its own /tmp: PrivateTmp=yes)"
    return ""


# -- readiness --------------------------------------------------------------------------

class Phase(enum.Enum):
    """Where a starting llama-server stands."""

    LOADING = "loading"
    SERVING = "serving"
    WRONG_ALIAS = "wrong-alias"


@dataclass(frozen=True)
class Readiness:
    """The phase and a line saying why."""

    phase: Phase
    detail: str


def served_names(models: Any) -> list[str]:
    """Every name a /v1/models answer serves (OpenAI `data[].id` and `aliases`)."""
    names: list[str] = []
    if not isinstance(models, Mapping):
        return names
    entries = models.get("data")
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, Mapping):
            continue
        candidates = [entry.get("id")]
        aliases = entry.get("aliases")
        if isinstance(aliases, list):
            candidates += aliases
        for name in candidates:
            if isinstance(name, str) and name and name not in names:
                names.append(name)
    return names


def assess_readiness(health_status: int | None, served: Sequence[str] | None, alias: str,
                     ) -> Readiness:
    """READY needs /health to answer 200 AND /v1/models to list the configured alias."""
    if health_status is None:
        return Readiness(Phase.LOADING, "llama-server is not answering /health yet")
    if health_status == 503:
        return Readiness(Phase.LOADING, "llama-server is loading the model")
    if health_status != 200:
        return Readiness(Phase.LOADING, f"/health answered HTTP {health_status}")
    if served is None:
        return Readiness(Phase.LOADING, "/health is ok; waiting for /v1/models")
    if alias in served:
        return Readiness(Phase.SERVING, f"/v1/models lists {alias!r}")
    listed = ", ".join(repr(name) for name in served) or "nothing"
    return Readiness(
        Phase.WRONG_ALIAS,
        f"llama-server serves {listed}, not the alias {alias!r} that backend chains refer "
        f"to: check cpu_floor.alias, and that cpu_floor.llama_server honours --alias",
    )


# -- liveness and the watchdog ---------------------------------------------------------

class SmokeVerdict(enum.Enum):
    """How a smoke completion ended."""

    OK = "ok"          # answered in time
    BUSY = "busy"      # timed out, but llama-server kept producing tokens for others
    TIMEOUT = "timeout"
    ERROR = "error"    # an HTTP error or a malformed answer

    @property
    def alive(self) -> bool:
        """Whether this verdict lets the watchdog be pinged."""
        return self in (SmokeVerdict.OK, SmokeVerdict.BUSY)


def judge_smoke(*, answered: bool, timed_out: bool, progress_before: float | None,
                progress_after: float | None, working: bool = False) -> SmokeVerdict:
    """A smoke completion's verdict; token progress during a timeout means busy, not wedged,
    and so does a running llama-server using CPU (`working`) when /metrics is starved too."""
    if answered:
        return SmokeVerdict.OK
    if not timed_out:
        return SmokeVerdict.ERROR
    if (progress_before is not None and progress_after is not None
            and progress_after > progress_before) or working:
        return SmokeVerdict.BUSY
    return SmokeVerdict.TIMEOUT


@dataclass(frozen=True)
class CpuSample:
    """llama-server's scheduler state and CPU time from /proc/PID/stat."""

    state: str  # R running, S sleeping, T stopped (SIGSTOP), t traced, Z zombie, ...
    ticks: int  # utime + stime, in clock ticks


def parse_proc_stat(text: str) -> CpuSample | None:
    """/proc/PID/stat reduced to a CpuSample (None when unreadable)."""
    fields = text.rpartition(")")[2].split()  # the command name may hold spaces
    try:
        return CpuSample(fields[0], int(fields[11]) + int(fields[12]))
    except (IndexError, ValueError):
        return None


def working(before: CpuSample | None, after: CpuSample | None) -> bool:
    """Busy, not wedged: llama-server is neither stopped nor dead and used CPU between the
    two samples. A saturated llama-server answers /health (and /metrics) late, from the same
    few HTTP threads as its completions, while it keeps decoding; a stopped or deadlocked one
    uses no CPU."""
    if before is None or after is None or after.state in ("T", "t", "Z", "X"):
        return False
    return after.ticks > before.ticks


def should_ping_watchdog(*, now: float, health_ok: bool, smoke_alive: bool,
                         smoke_finished_at: float | None, smoke_interval_s: float,
                         smoke_timeout_s: float, slack_s: float) -> bool:
    """WATCHDOG=1 only while /health passes and the latest smoke completion, recent enough
    that the smoke loop is evidently running, passed."""
    if not (health_ok and smoke_alive) or smoke_finished_at is None:
        return False
    return now - smoke_finished_at <= smoke_interval_s + smoke_timeout_s + slack_s


def check_period(check_interval_s: float, watchdog_interval_s: float | None) -> float:
    """Seconds between health checks: the configured interval, or half of WatchdogSec=
    (systemd's own recommendation) when that is shorter."""
    if watchdog_interval_s is None:
        return check_interval_s
    return min(check_interval_s, watchdog_interval_s)


def timing_warnings(settings: CpuFloorSettings, watchdog_s: float | None) -> list[str]:
    """Config timings that make the watchdog fire on a healthy server, or never fire."""
    if watchdog_s is None:
        return ["WatchdogSec= is not set on the unit: a wedged llama-server is never restarted"]
    warnings = []
    if settings.check_timeout_s >= watchdog_s:
        warnings.append(f"cpu_floor.check_timeout_s ({settings.check_timeout_s:g} s) is not "
                        f"below WatchdogSec= ({watchdog_s:g} s)")
    if settings.smoke_timeout_s >= watchdog_s:
        warnings.append(f"cpu_floor.smoke_timeout_s ({settings.smoke_timeout_s:g} s) is not "
                        f"below WatchdogSec= ({watchdog_s:g} s)")
    return warnings


def parse_progress(metrics_text: str) -> float | None:
    """How far llama-server has got, from its /metrics: llama_decode() calls so far (the
    token totals only move when a request finishes, so they cannot show a long one
    progressing); the token totals only for builds without n_decode_total."""
    decodes: float | None = None
    tokens = 0.0
    found_tokens = False
    for line in metrics_text.splitlines():
        name, _, value = line.partition(" ")
        if name not in ("llamacpp:n_decode_total", "llamacpp:prompt_tokens_total",
                        "llamacpp:tokens_predicted_total"):
            continue
        try:
            number = float(value.split()[0])
        except (IndexError, ValueError):
            return None
        if name == "llamacpp:n_decode_total":
            decodes = number
        else:
            tokens += number
            found_tokens = True
    if decodes is not None:
        return decodes
    return tokens if found_tokens else None


def smoke_tokens_per_second(answer: Any, elapsed_s: float) -> float | None:
    """Decode speed of a smoke answer: llama.cpp's own timing when it generated at least two
    tokens (the first comes from prompt processing), else completion tokens / wall time."""
    if not isinstance(answer, Mapping):
        return None
    timings = answer.get("timings")
    if isinstance(timings, Mapping):
        predicted = timings.get("predicted_n")
        rate = timings.get("predicted_per_second")
        if isinstance(predicted, int) and predicted >= 2 and isinstance(rate, (int, float)) \
                and rate > 0 and math.isfinite(rate):
            return float(rate)
    usage = answer.get("usage")
    tokens = usage.get("completion_tokens") if isinstance(usage, Mapping) else None
    if isinstance(tokens, int) and tokens > 0 and elapsed_s > 0:
        return tokens / elapsed_s
    return None


def smoke_request(alias: str, max_tokens: int) -> dict[str, Any]:
    """The body of a smoke completion: the chat API the router uses, a fixed token count."""
    return {
        "model": alias,
        "messages": [{"role": "user", "content": "Reply with one word."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": False,
        # llama.cpp extensions: always generate max_tokens, never reuse a cached prompt,
        # so every smoke completion measures the same work.
        "ignore_eos": True,
        "cache_prompt": False,
    }


# -- stops, restarts and backoff -------------------------------------------------------

# Reasons that are not restarts: a requested stop, and a config error (RestartPreventExitStatus).
NOT_RESTARTS = frozenset({"stopped", "config"})

_EXIT_REASONS = {
    EXIT_CONFIG: "config",
    EXIT_UNAVAILABLE: "preflight",
    EXIT_SOFTWARE: "llama-server-exited",
    EXIT_TEMPFAIL: "unhealthy",
}

STOP_EXPLANATIONS = {
    "stopped": "stopped on request",
    "config": "refused to start on a config problem (no restart until it is fixed)",
    "preflight": "refused to start: not enough RAM or the port is taken",
    "llama-server-exited": "llama-server exited on its own",
    "unhealthy": "llama-server loaded but failed its first smoke completion",
    "watchdog": "the watchdog fired: no passing health check and smoke completion for "
                "WatchdogSec=",
    "start-timeout": "llama-server did not become ready within TimeoutStartSec=",
    "signal": "the supervisor was killed by a signal",
    "core-dump": "the supervisor crashed (core dump)",
    "oom-kill": "the kernel's OOM killer killed a process of the floor",
}


def classify_stop(service_result: str, exit_code: str, exit_status: str) -> str:
    """The reason for a stop, from the $SERVICE_RESULT, $EXIT_CODE and $EXIT_STATUS that
    systemd gives ExecStopPost=."""
    if service_result == "success":
        return "stopped"
    if service_result == "exit-code" and exit_code == "exited" and exit_status.isdigit():
        return _EXIT_REASONS.get(int(exit_status), "exit-code")
    if service_result == "timeout":
        return "start-timeout"
    return service_result or "unknown"


@dataclass(frozen=True)
class Stop:
    """One recorded stop of the floor."""

    at: float                 # wall-clock time (seconds since the epoch)
    reason: str
    ready_for_s: float | None  # how long it had been ready; None if it never was


@dataclass(frozen=True)
class History:
    """What the floor remembers across its restarts (a small JSON file in its StateDirectory)."""

    counts: Mapping[str, int] = field(default_factory=dict)  # restarts by reason
    stops: tuple[Stop, ...] = ()                             # newest last
    ready_at: float | None = None                            # when this run sent READY=1

    KEEP = 20

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        return {
            "counts": dict(self.counts),
            "stops": [{"at": s.at, "reason": s.reason, "ready_for_s": s.ready_for_s}
                      for s in self.stops],
            "ready_at": self.ready_at,
        }

    @classmethod
    def from_json(cls, data: Any) -> History:
        """Parse `to_json()`'s output; anything malformed reads as an empty history."""
        if not isinstance(data, Mapping):
            return cls()
        counts = {str(k): int(v) for k, v in dict(data.get("counts") or {}).items()
                  if isinstance(v, int) and v >= 0}
        stops = []
        for item in data.get("stops") or []:
            if isinstance(item, Mapping) and isinstance(item.get("at"), (int, float)):
                ready_for = item.get("ready_for_s")
                stops.append(Stop(float(item["at"]), str(item.get("reason", "unknown")),
                                  float(ready_for) if isinstance(ready_for, (int, float))
                                  else None))
        ready_at = data.get("ready_at")
        return cls(counts, tuple(stops[-cls.KEEP:]),
                   float(ready_at) if isinstance(ready_at, (int, float)) else None)


def mark_ready(history: History, now: float) -> History:
    """The floor sent READY=1 at `now`."""
    return replace(history, ready_at=now)


def record_stop(history: History, reason: str, now: float) -> History:
    """Append a stop, count it when it leads to a restart, and forget the ready time."""
    ready_for = now - history.ready_at if history.ready_at is not None else None
    counts = dict(history.counts)
    if reason not in NOT_RESTARTS:
        counts[reason] = counts.get(reason, 0) + 1
    stops = (*history.stops, Stop(now, reason, ready_for))[-History.KEEP:]
    return History(counts, stops, None)


# An automatic restart follows its stop within RestartSec= (2 s); a start long after the
# last stop was asked for by a person (or came after a reboot) and owes no backoff.
AUTOMATIC_RESTART_WITHIN_S = 60.0


def failure_streak(stops: Sequence[Stop], stable_after_s: float, now: float) -> int:
    """Consecutive unexpected stops, newest first, since a requested stop or a stable run;
    0 when the newest stop is too old for this start to be systemd's automatic restart."""
    if not stops or now - stops[-1].at > AUTOMATIC_RESTART_WITHIN_S:
        return 0
    streak = 0
    for stop in reversed(stops):
        if stop.reason in NOT_RESTARTS:
            break
        if stop.ready_for_s is not None and stop.ready_for_s >= stable_after_s:
            break
        streak += 1
    return streak


def restart_delay(streak: int, base_s: float, max_s: float) -> float:
    """Extra wait before starting llama-server: none after a first unexpected stop, then
    base, 2×base, 4×base … up to max (systemd 252 has no RestartSteps=)."""
    if streak <= 1:
        return 0.0
    return min(max_s, base_s * 2 ** min(streak - 2, 30))
