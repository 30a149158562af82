"""The floor's pure decisions: readiness, watchdog pings, smoke verdicts, stops, backoff."""

from __future__ import annotations

import pytest

from mushishi.services.cpu_floor import core
from mushishi.services.cpu_floor.core import History, Phase, SmokeVerdict, Stop
from mushishi.shared.config.cpu_floor import CpuFloorSettings

LLAMA_MODELS = {  # what llama-server 11434.0.0 answers on /v1/models (trimmed)
    "models": [{"name": "tiny", "model": "tiny"}],
    "object": "list",
    "data": [{"id": "tiny", "aliases": ["tiny", "tiny-2"], "object": "model"}],
}


@pytest.mark.parametrize(
    ("status", "served", "phase"),
    [
        (None, None, Phase.LOADING),            # not listening yet
        (503, None, Phase.LOADING),             # loading the model
        (500, None, Phase.LOADING),
        (200, None, Phase.LOADING),             # /v1/models not answered yet
        (200, ["nemotron-cpu-prism"], Phase.SERVING),
        (200, ["model.gguf"], Phase.WRONG_ALIAS),  # registered under its file name
        (200, [], Phase.WRONG_ALIAS),
        (503, ["nemotron-cpu-prism"], Phase.LOADING),  # health decides first
    ],
)
def test_readiness_needs_health_200_and_the_alias(status, served, phase) -> None:
    assert core.assess_readiness(status, served, "nemotron-cpu-prism").phase is phase


def test_readiness_wrong_alias_names_what_is_served_and_the_key() -> None:
    detail = core.assess_readiness(200, ["model.gguf"], "nemotron-cpu-prism").detail
    assert "'model.gguf'" in detail and "'nemotron-cpu-prism'" in detail
    assert "cpu_floor.alias" in detail and "\n" not in detail


def test_served_names_reads_ids_and_aliases_and_ignores_junk() -> None:
    assert core.served_names(LLAMA_MODELS) == ["tiny", "tiny-2"]
    assert core.served_names({"data": [None, {"id": 3}, {"id": "x"}]}) == ["x"]
    assert core.served_names(["not", "a", "mapping"]) == []
    assert core.served_names({"data": "nope"}) == []


def test_argv_uses_every_key_and_appends_extra_args_last() -> None:
    settings = CpuFloorSettings(llama_server="/opt/llama-server", model="/m/x.gguf",
                                alias="a", host="127.0.0.1", port=8001, ctx_size=4096,
                                threads=12, mlock=True, extra_args=["--no-webui"])
    assert core.llama_server_argv(settings, core.MODERN) == [
        "/opt/llama-server", "--model", "/m/x.gguf", "--alias", "a", "--host", "127.0.0.1",
        "--port", "8001", "--ctx-size", "4096", "--metrics", "--threads", "12",
        "--load-mode", "mmap+mlock", "--no-webui"]


def test_argv_for_an_older_build_uses_mlock_and_drops_what_it_lacks() -> None:
    legacy = core.Capabilities(mlock_args=("--mlock",), metrics=False)
    argv = core.llama_server_argv(CpuFloorSettings(mlock=True), legacy)
    assert argv[-1] == "--mlock" and "--metrics" not in argv


def test_argv_leaves_threads_to_llama_cpp_when_unset_and_skips_mlock_when_off() -> None:
    argv = core.llama_server_argv(CpuFloorSettings(threads=None, mlock=False))
    assert "--threads" not in argv and "--load-mode" not in argv


# Excerpts of `llama-server --help` from two generations of llama.cpp.
HELP_NOW = """-lm,   --load-mode MODE                 model loading mode (default: auto)
                                        - mmap+mlock: mmap + force system to keep model in RAM
-a,    --alias STRING                   set model name aliases
--metrics                               enable prometheus compatible metrics endpoint
"""
HELP_OLD = """--mlock                   force system to keep model in RAM rather than swapping
--no-mmap                 do not memory-map model
"""


@pytest.mark.parametrize(
    ("text", "capabilities"),
    [
        (HELP_NOW, core.Capabilities(("--load-mode", "mmap+mlock"), True)),
        (HELP_OLD, core.Capabilities(("--mlock",), False)),
        ("--port N\n--model FNAME\n", core.Capabilities(None, False)),
    ],
)
def test_capabilities_are_read_from_help(text, capabilities) -> None:
    assert core.parse_capabilities(text) == capabilities


def test_capability_warnings_name_what_is_lost() -> None:
    warnings = core.capability_warnings(CpuFloorSettings(mlock=True),
                                        core.Capabilities(None, False))
    assert len(warnings) == 2 and "cpu_floor.mlock is ignored" in warnings[0]
    assert core.capability_warnings(CpuFloorSettings(mlock=False), core.MODERN) == []


@pytest.mark.parametrize("flag", ["-a", "--alias", "--port=9", "-m", "--mlock", "--metrics"])
def test_extra_args_may_not_repeat_a_flag_the_supervisor_sets(flag) -> None:
    with pytest.raises(ValueError, match="is set by the supervisor"):
        CpuFloorSettings(extra_args=[flag, "x"])


# -- RAM ----------------------------------------------------------------------------------

def test_meminfo_is_parsed_to_bytes() -> None:
    parsed = core.parse_meminfo("MemTotal:  1000 kB\nMemAvailable:   512 kB\nHugePages_Total: 0\n")
    assert parsed == {"MemTotal": 1024000, "MemAvailable": 524288, "HugePages_Total": 0}


@pytest.mark.parametrize(
    ("available_mib", "model_mib", "headroom_mib", "refused"),
    [(4096, 2048, 1024, False), (3072, 2048, 1024, False), (3071, 2048, 1024, True),
     (100, 200, 0, True), (200, 200, 0, False)],
)
def test_ram_refusal_compares_available_with_model_plus_headroom(
        available_mib, model_mib, headroom_mib, refused) -> None:
    meminfo = {"MemAvailable": available_mib * core.MIB}
    refusal = core.ram_refusal(model_mib * core.MIB, meminfo, headroom_mib)
    assert (refusal is not None) is refused
    if refusal is not None:
        assert refusal.exit_status == core.EXIT_UNAVAILABLE
        assert "cpu_floor.ram_headroom_mib" in refusal.message and "\n" not in refusal.message


def test_ram_refusal_without_memavailable_says_so() -> None:
    refusal = core.ram_refusal(1, {"MemTotal": 10}, 0)
    assert refusal is not None and "MemAvailable" in refusal.message


def test_memlock_warning_only_when_mlock_cannot_cover_the_model() -> None:
    assert core.memlock_warning(10 * core.GIB, True, None) is None       # unlimited
    assert core.memlock_warning(10 * core.GIB, False, 8 * core.MIB) is None
    warning = core.memlock_warning(10 * core.GIB, True, 8 * core.MIB)
    assert warning is not None and "LimitMEMLOCK=infinity" in warning


# -- liveness -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("answered", "timed_out", "before", "after", "verdict"),
    [
        (True, False, None, None, SmokeVerdict.OK),
        (False, False, 10, 20, SmokeVerdict.ERROR),      # an HTTP error is never "busy"
        (False, True, 10, 250, SmokeVerdict.BUSY),       # tokens kept flowing for others
        (False, True, 10, 10, SmokeVerdict.TIMEOUT),     # nothing moved: wedged
        (False, True, None, 250, SmokeVerdict.TIMEOUT),  # /metrics did not answer before
        (False, True, 10, None, SmokeVerdict.TIMEOUT),   # nor after
    ],
)
def test_smoke_verdict_tells_busy_from_wedged(answered, timed_out, before, after,
                                              verdict) -> None:
    assert core.judge_smoke(answered=answered, timed_out=timed_out, progress_before=before,
                            progress_after=after) is verdict


@pytest.mark.parametrize(
    ("health_ok", "smoke_alive", "finished_ago", "ping"),
    [
        (True, True, 1.0, True),
        (False, True, 1.0, False),   # /health failed
        (True, False, 1.0, False),   # the latest smoke completion failed
        (True, True, None, False),   # no smoke completion yet
        (True, True, 50.0, False),   # the smoke loop has not finished one for too long
        (True, True, 46.0, True),    # 30 interval + 15 timeout + 1 slack
    ],
)
def test_watchdog_is_pinged_only_while_health_and_smoke_pass(
        health_ok, smoke_alive, finished_ago, ping) -> None:
    now = 1000.0
    assert core.should_ping_watchdog(
        now=now, health_ok=health_ok, smoke_alive=smoke_alive,
        smoke_finished_at=None if finished_ago is None else now - finished_ago,
        smoke_interval_s=30, smoke_timeout_s=15, slack_s=1) is ping


def test_check_period_never_exceeds_half_the_watchdog() -> None:
    assert core.check_period(5, None) == 5
    assert core.check_period(5, 15) == 5
    assert core.check_period(5, 1.5) == 1.5


def test_timing_warnings_flag_timeouts_longer_than_the_watchdog() -> None:
    settings = CpuFloorSettings(check_timeout_s=5, smoke_timeout_s=40)
    assert core.timing_warnings(settings, 30) == [
        "cpu_floor.smoke_timeout_s (40 s) is not below WatchdogSec= (30 s)"]
    assert core.timing_warnings(CpuFloorSettings(), 30) == []
    assert "never restarted" in core.timing_warnings(settings, None)[0]


def test_progress_counts_decode_calls_which_move_during_a_long_request() -> None:
    text = ("# HELP x\nllamacpp:prompt_tokens_total 57\nllamacpp:prompt_tokens_seconds 9\n"
            "llamacpp:tokens_predicted_total 201\nllamacpp:n_decode_total 180\n")
    assert core.parse_progress(text) == 180


def test_progress_falls_back_to_token_totals_and_rejects_junk() -> None:
    text = "llamacpp:prompt_tokens_total 57\nllamacpp:tokens_predicted_total 201\n"
    assert core.parse_progress(text) == 258
    assert core.parse_progress("nothing here\n") is None
    assert core.parse_progress("llamacpp:n_decode_total many\n") is None


@pytest.mark.parametrize(
    ("answer", "elapsed", "rate"),
    [
        ({"timings": {"predicted_n": 4, "predicted_per_second": 3500.0}}, 0.01, 3500.0),
        # one token comes from prompt processing: llama.cpp reports 0/s, use wall time
        ({"timings": {"predicted_n": 1, "predicted_per_second": 0.0},
          "usage": {"completion_tokens": 1}}, 0.5, 2.0),
        ({"usage": {"completion_tokens": 4}}, 2.0, 2.0),
        ({}, 1.0, None),
        ("junk", 1.0, None),
    ],
)
def test_smoke_tokens_per_second(answer, elapsed, rate) -> None:
    assert core.smoke_tokens_per_second(answer, elapsed) == rate


# -- stops, restarts, backoff --------------------------------------------------------------

@pytest.mark.parametrize(
    ("result", "code", "status", "reason"),
    [
        ("success", "exited", "0", "stopped"),
        ("success", "killed", "TERM", "stopped"),
        ("exit-code", "exited", "78", "config"),
        ("exit-code", "exited", "69", "preflight"),
        ("exit-code", "exited", "70", "llama-server-exited"),
        ("exit-code", "exited", "75", "unhealthy"),
        ("exit-code", "exited", "1", "exit-code"),
        ("watchdog", "killed", "ABRT", "watchdog"),
        ("watchdog", "dumped", "ABRT", "watchdog"),
        ("timeout", "killed", "TERM", "start-timeout"),
        ("signal", "killed", "KILL", "signal"),
        ("oom-kill", "killed", "KILL", "oom-kill"),
        ("", "", "", "unknown"),
    ],
)
def test_stop_reason_from_what_systemd_tells_exec_stop_post(result, code, status,
                                                            reason) -> None:
    assert core.classify_stop(result, code, status) == reason


def test_record_stop_counts_restarts_but_not_requested_stops_or_config_errors() -> None:
    history = History()
    history = core.mark_ready(history, 100.0)
    history = core.record_stop(history, "watchdog", 160.0)
    history = core.record_stop(history, "stopped", 170.0)
    history = core.record_stop(history, "config", 180.0)
    history = core.record_stop(history, "watchdog", 190.0)
    assert history.counts == {"watchdog": 2}
    assert [s.reason for s in history.stops] == ["watchdog", "stopped", "config", "watchdog"]
    assert history.stops[0].ready_for_s == 60.0      # it had been ready for a minute
    assert history.stops[1].ready_for_s is None      # the ready time is forgotten on a stop
    assert history.ready_at is None


def test_history_keeps_the_last_twenty_stops_and_survives_json() -> None:
    history = History()
    for i in range(30):
        history = core.record_stop(history, "llama-server-exited", float(i))
    assert len(history.stops) == History.KEEP
    assert history.counts == {"llama-server-exited": 30}
    assert History.from_json(history.to_json()) == history


@pytest.mark.parametrize("junk", [None, [], "x", {"counts": {"a": -1}, "stops": [{"x": 1}]}])
def test_history_from_malformed_json_is_empty(junk) -> None:
    history = History.from_json(junk)
    assert history.counts == {} and history.stops == ()


def _stops(*specs: tuple[str, float | None]) -> tuple[Stop, ...]:
    return tuple(Stop(float(i), reason, ready) for i, (reason, ready) in enumerate(specs))


@pytest.mark.parametrize(
    ("stops", "streak"),
    [
        ((), 0),
        (_stops(("watchdog", None)), 1),
        (_stops(("watchdog", None), ("llama-server-exited", 5.0)), 2),
        (_stops(("watchdog", None), ("stopped", None), ("watchdog", None)), 1),
        (_stops(("watchdog", None), ("config", None), ("unhealthy", None)), 1),
        # a run that stayed ready for stable_after_s (300) ends the streak
        (_stops(("watchdog", None), ("watchdog", 301.0), ("watchdog", 1.0)), 1),
        (_stops(("watchdog", None), ("watchdog", 299.0), ("watchdog", 1.0)), 3),
    ],
)
def test_failure_streak_counts_consecutive_unexpected_stops(stops, streak) -> None:
    now = stops[-1].at + 2 if stops else 0.0
    assert core.failure_streak(stops, 300, now) == streak


def test_failure_streak_is_zero_when_the_last_stop_is_too_old_for_an_automatic_restart(
) -> None:
    stops = _stops(("watchdog", None), ("watchdog", None))
    assert core.failure_streak(stops, 300, stops[-1].at + 59) == 2
    assert core.failure_streak(stops, 300, stops[-1].at + 61) == 0  # someone started it


@pytest.mark.parametrize(
    ("streak", "delay"),
    [(0, 0), (1, 0), (2, 5), (3, 10), (4, 20), (5, 40), (7, 160), (8, 300), (50, 300),
     (10_000, 300)],
)
def test_restart_delay_doubles_from_the_second_restart_up_to_the_cap(streak, delay) -> None:
    assert core.restart_delay(streak, 5, 300) == delay


def test_backoff_max_below_base_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="restart_backoff_max_s"):
        CpuFloorSettings(restart_backoff_base_s=10, restart_backoff_max_s=5)


STAT = "4242 (llama server) {state} 1 4242 4242 0 -1 4194560 900 0 0 0 {utime} {stime} 0 0 20 0"


def sample(state: str, utime: int, stime: int = 5) -> core.CpuSample | None:
    return core.parse_proc_stat(STAT.format(state=state, utime=utime, stime=stime))


def test_proc_stat_gives_the_state_and_the_cpu_time_despite_spaces_in_the_name() -> None:
    assert sample("R", 100, 7) == core.CpuSample("R", 107)
    assert core.parse_proc_stat("4242 (x) R 1") is None
    assert core.parse_proc_stat("") is None


@pytest.mark.parametrize(
    ("before", "after", "working"),
    [
        (sample("R", 100), sample("R", 130), True),    # saturated: decoding for others
        (sample("S", 100), sample("S", 101), True),    # sleeping between decode steps
        (sample("R", 100), sample("R", 100), False),   # no CPU at all: deadlocked
        (sample("R", 100), sample("T", 130), False),   # SIGSTOP: wedged, whatever it did
        (sample("R", 100), sample("Z", 130), False),   # exited
        (None, sample("R", 130), False),               # unreadable: not proof of life
        (sample("R", 100), None, False),
    ],
)
def test_working_means_running_and_using_cpu(before, after, working) -> None:
    assert core.working(before, after) is working


def test_smoke_timeout_is_busy_when_metrics_are_starved_but_cpu_moves() -> None:
    assert core.judge_smoke(answered=False, timed_out=True, progress_before=None,
                            progress_after=None, working=True) is SmokeVerdict.BUSY
    assert core.judge_smoke(answered=False, timed_out=False, progress_before=None,
                            progress_after=None, working=True) is SmokeVerdict.ERROR
