"""Concurrency slots with a bounded FIFO, and the change signal T1 queues wait on."""

from __future__ import annotations

import asyncio

import pytest

from mushishi.services.router.core import GpuView, Health, Hop
from mushishi.services.router.state import QueueFull, RoutingState, Slots


async def test_slots_hand_a_released_slot_to_the_oldest_waiter_first() -> None:
    slots = Slots(limit=1, queue_max=5)
    assert slots.try_acquire()
    order: list[str] = []

    async def wait(name: str) -> None:
        assert await slots.acquire(60)
        order.append(name)

    first = asyncio.create_task(wait("first"))
    await asyncio.sleep(0)
    second = asyncio.create_task(wait("second"))
    await asyncio.sleep(0)
    assert slots.queued == 2 and slots.in_flight == 1
    slots.release()
    await first
    assert order == ["first"] and slots.in_flight == 1
    slots.release()
    await second
    assert order == ["first", "second"]
    slots.release()
    assert slots.in_flight == 0


async def test_a_full_queue_refuses_at_once() -> None:
    slots = Slots(limit=1, queue_max=1)
    assert slots.try_acquire()
    waiter = asyncio.create_task(slots.acquire(60))
    await asyncio.sleep(0)
    with pytest.raises(QueueFull):
        await slots.acquire(60)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert slots.queued == 0


async def test_acquire_times_out_without_a_slot_and_takes_nothing() -> None:
    slots = Slots(limit=1, queue_max=1)
    assert slots.try_acquire()
    assert await slots.acquire(0) is False
    assert slots.in_flight == 1 and slots.queued == 0


async def test_unlimited_slots_never_queue() -> None:
    slots = Slots(limit=None, queue_max=0)
    assert all(slots.try_acquire() for _ in range(100))
    assert slots.in_flight == 100 and not slots.full


async def test_try_acquire_does_not_jump_the_queue() -> None:
    slots = Slots(limit=1, queue_max=2)
    assert slots.try_acquire()
    waiter = asyncio.create_task(slots.acquire(60))
    await asyncio.sleep(0)
    slots.release()  # handed to the waiter, not freed
    assert not slots.try_acquire()
    assert await waiter
    assert slots.in_flight == 1


async def test_routing_state_wakes_waiters_on_a_health_change_only() -> None:
    hops = {"cpu": Hop("cpu", "m", True, "local")}
    state = RoutingState(hops, clock=lambda: 0.0)
    waiter = asyncio.create_task(state.wait_change(60))
    await asyncio.sleep(0)
    state.set_health("cpu", Health.UNKNOWN, "same state")
    await asyncio.sleep(0)
    assert not waiter.done()
    state.set_health("cpu", Health.UP, "healthy")
    assert await waiter is True
    assert await state.wait_change(0) is False


def test_verdicts_follow_every_health_reason_and_gpu_change() -> None:
    hops = {"gpu": Hop("gpu", "m", True, "local", modes=frozenset({"forensic"}))}
    state = RoutingState(hops, clock=lambda: 0.0)
    assert state.verdict("gpu").state == "unknown"
    state.set_health("gpu", Health.UP, "healthy")
    assert (state.verdict("gpu").state, state.verdict("gpu").reason) == ("up", "healthy")
    state.set_health("gpu", Health.UP, "healthy (model list unavailable)")
    assert state.verdict("gpu").reason == "healthy (model list unavailable)"
    state.set_gpu(GpuView(True, "creative", "ready"))
    assert state.verdict("gpu").state == "mode_inactive"
    state.set_gpu(GpuView(True, "forensic", "ready"))
    assert state.verdict("gpu").usable
    state.set_health("gpu", Health.DOWN, "connection refused")
    assert not state.verdict("gpu").usable


def _state(now: list[float]) -> RoutingState:
    hops = {"gpu": Hop("gpu", "m", True, "127.0.0.1", modes=frozenset({"agent"})),
            "cpu": Hop("cpu", "c", True, "127.0.0.1")}
    return RoutingState(hops, lambda: now[0])


async def test_mode_since_counts_only_changes_seen_while_gpud_is_followed() -> None:
    now = [10.0]
    state = _state(now)
    state.set_gpu(GpuView(True, "agent", "ready"))  # first sight: no dwell
    assert state.mode_since == float("-inf")
    now[0] = 20.0
    state.set_gpu(GpuView(True, "agent", "switching"))  # the mode stays until it settles
    assert state.mode_since == float("-inf")
    now[0] = 30.0
    state.set_gpu(GpuView(True, "creative", "ready"))
    assert state.mode_since == 30.0
    now[0] = 40.0
    state.set_gpu(GpuView(True, "creative", "ready", last_switch_reason="idle"))
    assert state.mode_since == 30.0


async def test_gpu_work_is_work_on_backends_with_modes_only() -> None:
    now = [5.0]
    state = _state(now)
    state.gpu_work_ended("cpu")
    assert state.last_gpu_work == float("-inf")
    state.gpu_work_ended("gpu")
    assert state.last_gpu_work == 5.0
    assert not state.gpu_busy()
    assert state.slots("cpu").try_acquire()
    assert not state.gpu_busy()  # the CPU floor is not GPU work
    assert state.slots("gpu").try_acquire()
    assert state.gpu_busy()
