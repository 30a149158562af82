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
