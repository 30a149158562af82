"""The tenants layer as the router shows it and the door it closes: a backend served by a
tenant whose probe left the box is refused for T1 work, and waiters re-judge."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mushishi.services.router.confinement import Confinement
from mushishi.services.router.core import Hop
from mushishi.services.router.state import RoutingState
from mushishi.services.router.status_view import Sovereignty
from mushishi.services.router.tenants import TenantsFollower
from mushishi.shared.tenant_confinement import TenantRecord, TenantsLayer, write_record

NOW = 1_800_000_000.0
HOPS = {"gpu": Hop("gpu", "gpu-model", True, "127.0.0.1"),
        "cpu": Hop("cpu", "cpu-alias", True, "127.0.0.1")}
LEFT = "from container vllm: a datagram to 192.0.2.1:9 left: nothing refused it within 1 s"


def publish(run_dir: Path, name: str, confined: bool | None, detail: str) -> None:
    directory = run_dir / name
    directory.mkdir(parents=True, exist_ok=True)
    write_record(directory, TenantRecord(name, "docker", confined, detail, NOW - 1, 15.0,
                                         "192.0.2.1:9"))


def test_the_summary_and_the_status_object_carry_the_fourth_layer() -> None:
    sovereignty = Sovereignty(connect_check=True, confinement=Confinement(True, "EPERM"))
    assert sovereignty.as_json()["summary"] == "config ✓, connect-time ✓, kernel ✓, tenants ?"
    sovereignty.tenants = TenantsLayer(False, f"tenant vllm: {LEFT}", {"vllm": False, "tts": True},
                                       {"vllm": f"tenant vllm: {LEFT}", "tts": "tenant tts: ok"})
    body = sovereignty.as_json()
    assert body == {"config": True, "connect_time": True, "kernel": True, "tenants": False,
                    "detail": "EPERM", "tenants_detail": f"tenant vllm: {LEFT}",
                    "tenant_verdicts": {"vllm": False, "tts": True},
                    "summary": "config ✓, connect-time ✓, kernel ✓, tenants ✗"}
    assert sovereignty.layers()["tenants"] is False


async def test_an_unconfined_tenant_closes_its_backends_to_t1_and_reopens_them(
        tmp_path: Path) -> None:
    state = RoutingState(HOPS, lambda: 0.0)
    sovereignty = Sovereignty(connect_check=True)
    follower = TenantsFollower(sovereignty, state, {"vllm": frozenset({"gpu"})}, tmp_path,
                               lambda: NOW)
    assert (await follower.refresh()).detail == "no tenant is running"
    assert sovereignty.tenants.verdict is True and state.sovereign_refusals == {}
    publish(tmp_path, "vllm", True, "from container vllm: refused")
    await follower.refresh()
    assert state.sovereign_refusals == {}
    woken = asyncio.create_task(state.wait_change(60))
    await asyncio.sleep(0)
    publish(tmp_path, "vllm", False, LEFT)
    await follower.refresh()
    assert await woken  # a T1 request waiting in its queue re-judges at once
    assert sovereignty.tenants.verdict is False
    assert state.sovereign_refusals == {
        "gpu": f"served by tenant vllm, which is not confined (tenant vllm: {LEFT})"}
    publish(tmp_path, "vllm", None, "no running container of tenant vllm yet")
    await follower.refresh()  # not known is shown, but closes nothing
    assert sovereignty.tenants.verdict is None and state.sovereign_refusals == {}


async def test_following_reads_in_the_background_until_closed(tmp_path: Path) -> None:
    state = RoutingState(HOPS, lambda: 0.0)
    sovereignty = Sovereignty(connect_check=True)
    follower = TenantsFollower(sovereignty, state, {"vllm": frozenset({"gpu"})}, tmp_path,
                               lambda: NOW)
    follower.start()
    try:
        publish(tmp_path, "vllm", False, LEFT)
        for _ in range(300):
            if state.sovereign_refusals:
                break
            await asyncio.sleep(0.01)
        assert set(state.sovereign_refusals) == {"gpu"}
    finally:
        await follower.close()
