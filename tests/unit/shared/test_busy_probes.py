"""Busy-probe parsing: vLLM /metrics, ComfyUI /queue, JSON paths, the utilisation backstop."""

from __future__ import annotations

import pytest

from mushishi.shared.busy_probes import (
    BusyReading,
    ProbeFormatError,
    busy_lines,
    mean_utilisation,
    parse_comfyui_queue,
    parse_vllm_metrics,
    value_at,
)

# As vLLM 0.10 writes it (two engines, other metrics around).
VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="nemotron"} 2.0
vllm:num_requests_running{engine="1",model_name="nemotron"} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="nemotron"} 4.0
vllm:num_requests_waiting{engine="1",model_name="nemotron"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="nemotron"} 0.42
"""
LOADED_IDLE = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="nemotron"} 0.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="nemotron"} 0.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="nemotron"} 0.0
"""


def test_vllm_metrics_sum_running_and_waiting_over_engines() -> None:
    assert parse_vllm_metrics(VLLM_METRICS) == (3, 4)


def test_vllm_loaded_but_idle_is_zero() -> None:
    assert parse_vllm_metrics(LOADED_IDLE) == (0, 0)


def test_vllm_metrics_without_the_gauges_is_a_format_error() -> None:
    with pytest.raises(ProbeFormatError, match="is this vLLM"):
        parse_vllm_metrics("# TYPE process_cpu_seconds_total counter\n"
                           "process_cpu_seconds_total 1.0\n")


def test_comfyui_queue_counts_running_and_pending() -> None:
    queue = {"queue_running": [[1, "a", {}, {}, []]],
             "queue_pending": [[2, "b", {}, {}, []], [3, "c", {}, {}, []]]}
    assert parse_comfyui_queue(queue) == (1, 2)
    assert parse_comfyui_queue({"queue_running": [], "queue_pending": []}) == (0, 0)
    with pytest.raises(ProbeFormatError):
        parse_comfyui_queue({"exec_info": {}})


@pytest.mark.parametrize(("document", "path", "count"), [
    ({"in_flight": 3}, "in_flight", 3),
    ({"stats": {"active": 2.0}}, "stats.active", 2),
    ({"queues": {"tts": ["a", "b"]}}, "queues.tts", 2),
    ({"workers": [{"busy": 1}, {"busy": 4}]}, "workers.1.busy", 4),
])
def test_value_at_reads_numbers_and_counts_lists(document: object, path: str,
                                                 count: int) -> None:
    assert value_at(document, path) == count


@pytest.mark.parametrize(("document", "path"), [
    ({"in_flight": 3}, "inflight"),
    ({"in_flight": "3"}, "in_flight"),
    ({"in_flight": True}, "in_flight"),
    ({"workers": [1]}, "workers.5"),
])
def test_value_at_refuses_what_is_not_a_count(document: object, path: str) -> None:
    with pytest.raises(ProbeFormatError):
        value_at(document, path)


def test_busy_lines_list_busy_and_unreadable_tenants_then_the_gpu_backstop() -> None:
    readings = [BusyReading("vllm", 2, "2 request(s) running, 0 waiting (vLLM)"),
                BusyReading("comfyui", 0, "0 prompt(s) running, 0 pending (ComfyUI)"),
                BusyReading("tts", None, "busy probe http://x unreadable: refused")]
    assert busy_lines(readings, ["audio"], 55.0, 10) == [
        "vllm: 2 request(s) running, 0 waiting (vLLM)",
        "tts: busy probe http://x unreadable: refused",
        "GPU utilisation 55% (≥ 10%) while audio run(s) without a busy probe"]


def test_busy_lines_loaded_idle_gpu_is_not_busy() -> None:
    assert busy_lines([], ["audio"], 3.0, 10) == []
    assert busy_lines([], [], 99.0, 10) == []  # every tenant has a probe: no backstop


async def test_mean_utilisation_samples_over_the_window_without_real_sleep() -> None:
    samples = iter([0, 100, 100, 0, 50, 50])
    slept: list[float] = []

    async def read() -> int:
        return next(samples)

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    assert await mean_utilisation(read, 1.0, sleep=sleep) == pytest.approx(50.0)
    assert slept == [0.2] * 5
