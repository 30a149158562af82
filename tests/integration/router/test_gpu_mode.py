"""GPU-mode awareness over a real (private) D-Bus with a stand-in io.mushishi.GpuMode1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mushishi.shared import dbus_names
from tests.integration.router.harness import Box, post_chat, running_box, wait_for
from tests.standins.bus import PrivateBus
from tests.standins.gpumode import GpuModeStandin


@contextlib.asynccontextmanager
async def followed(tmp_path: Path, bus: PrivateBus, **config: str) -> AsyncIterator[Box]:
    async with running_box(tmp_path, bus_address=bus.address, follow_gpu=True, **config) as box:
        yield box


def mode_is(box: Box, mode: str, state: str = "ready") -> bool:
    gpu = box.router.state.gpu
    return gpu.present and gpu.active_mode == mode and gpu.state == state


async def until_mode(box: Box, mode: str, state: str = "ready") -> None:
    """Until the router has followed gpud into `mode` (`state`)."""
    await wait_for(lambda: mode_is(box, mode, state), what=f"{mode} ({state}) followed")


async def switched(box: Box, gpud: GpuModeStandin, mode: str) -> None:
    """Once the router follows gpud's first mode, gpud moves to `mode`; until followed."""
    await until_mode(box, "forensic")
    gpud.set_mode(mode)
    await until_mode(box, mode)


async def test_backend_of_another_mode_is_skipped_with_no_round_trip(
    tmp_path: Path, private_bus: PrivateBus, gpud: GpuModeStandin
) -> None:
    async with followed(tmp_path, private_bus) as box:
        await switched(box, gpud, "creative")
        await asyncio.sleep(0.5)  # give a wrongful probe every chance to happen
        seen = len(box.gpu.requests)
        for _ in range(3):
            status, headers, _ = await post_chat(box, "private")
            assert (status, headers["X-Mushishi-Backend"]) == (200, "cpu")
            assert "X-Mushishi-Fallbacks" not in headers
        await asyncio.sleep(0.5)
        assert len(box.gpu.requests) == seen  # no request and no health probe
        status = box.router.status()
        assert status["backends"]["gpu"]["state"] == "mode_inactive"
        assert status["profiles"]["private"]["would_use"] == "cpu"
        gpud.set_mode("agent")
        await wait_for(lambda: box.router.state.verdict("gpu").usable, what="gpu usable")
        _, headers, _ = await post_chat(box, "private")
        assert headers["X-Mushishi-Backend"] == "gpu"


async def test_while_switching_t1_takes_the_next_local_hop_or_waits_for_the_new_mode(
    tmp_path: Path, private_bus: PrivateBus, gpud: GpuModeStandin
) -> None:
    async with followed(tmp_path, private_bus, private_extra="queue_timeout_s = 10") as box:
        await until_mode(box, "forensic")
        gpud.set_state("switching")
        await until_mode(box, "forensic", "switching")
        _, headers, _ = await post_chat(box, "private")
        assert headers["X-Mushishi-Backend"] == "cpu"
        await box.cpu.refuse()
        waiting = asyncio.create_task(post_chat(box, "private"))
        await wait_for(lambda: box.router.state.t1_queued("private") == 1, what="queued")
        gpud.set_mode("agent", "ready")
        status, headers, _ = await waiting
        assert (status, headers["X-Mushishi-Backend"]) == (200, "gpu")


async def test_client_profile_in_the_wrong_mode_answers_mode_mismatch(
    tmp_path: Path, private_bus: PrivateBus, gpud: GpuModeStandin
) -> None:
    async with followed(tmp_path, private_bus) as box:
        await until_mode(box, "forensic")
        status, headers, _ = await post_chat(box, "client")
        assert (status, headers["X-Mushishi-Backend"]) == (200, "gpu")
        gpud.set_mode("agent")
        await until_mode(box, "agent")
        status, headers, body = await post_chat(box, "client")
        assert (status, body["error"]["code"]) == (503, "mode_mismatch")
        assert "requires GPU mode 'forensic'" in body["error"]["message"]
        assert gpud.switch_calls == [] and box.egress.requests == []


async def test_client_profile_with_switch_asks_gpud_then_is_served(
    tmp_path: Path, private_bus: PrivateBus, gpud: GpuModeStandin
) -> None:
    gpud.set_mode("off")
    async with followed(tmp_path, private_bus,
                        client_extra='queue_timeout_s = 10\non_mode_mismatch = "switch"') as box:
        await until_mode(box, "off")
        gpud.switch_delay = 0.3
        results = await asyncio.gather(post_chat(box, "client"), post_chat(box, "client"))
        assert [(s, h["X-Mushishi-Backend"]) for s, h, _ in results] == [(200, "gpu")] * 2
        assert gpud.switch_calls == [("forensic", False)]  # one switch for both requests


async def test_client_profile_with_switch_refuses_when_the_gpu_is_busy(
    tmp_path: Path, private_bus: PrivateBus, gpud: GpuModeStandin
) -> None:
    gpud.set_mode("creative")
    gpud.busy_reasons = ["comfyui: 2 jobs queued"]
    async with followed(tmp_path, private_bus,
                        client_extra='queue_timeout_s = 5\non_mode_mismatch = "switch"') as box:
        await until_mode(box, "creative")
        status, _, body = await post_chat(box, "client")
        assert (status, body["error"]["code"]) == (503, "mode_mismatch")
        assert "comfyui: 2 jobs queued" in body["error"]["message"]
        # gpud decides: the router asked, and gpud refused with Error.Busy.
        assert gpud.switch_calls == [("forensic", False)]
        assert "gpud refused to switch: work in flight" in body["error"]["message"]
        gpud.switch_calls.clear()
        gpud.busy_reasons = []
        gpud.refuse_switch = dbus_names.ERROR_HELD
        status, _, body = await post_chat(box, "client")
        assert (status, body["error"]["code"]) == (503, "mode_mismatch")
        assert "gpud refused to switch" in body["error"]["message"]


async def test_client_profile_with_switch_is_served_when_only_a_staying_tenant_is_busy(
    tmp_path: Path, private_bus: PrivateBus, gpud: GpuModeStandin
) -> None:
    # The embedder runs in both modes: a switch from agent to forensic does not stop it, so
    # gpud allows the switch although Busy() (every running tenant) reports its work.
    gpud.tenants = {"agent": ["vllm-agent", "embedder"],
                    "forensic": ["vllm-forensic", "embedder"]}
    gpud.busy_tenants = {"embedder": "embedder: 3 requests in flight"}
    gpud.set_mode("agent")
    assert gpud.busy_lines() == ["embedder: 3 requests in flight"]
    async with followed(tmp_path, private_bus,
                        client_extra='queue_timeout_s = 10\non_mode_mismatch = "switch"') as box:
        await until_mode(box, "agent")
        status, headers, _ = await post_chat(box, "client")
        assert (status, headers["X-Mushishi-Backend"]) == (200, "gpu")
        assert gpud.switch_calls == [("forensic", False)]
        assert gpud.active == "forensic"


async def test_without_gpud_on_the_bus_routing_falls_back_to_health_probes(
    tmp_path: Path, private_bus: PrivateBus, gpud: GpuModeStandin
) -> None:
    async with followed(tmp_path, private_bus) as box:
        await switched(box, gpud, "creative")
        gpud.disconnect()
        await wait_for(lambda: not box.router.state.gpu.present, what="gpud gone")
        await wait_for(lambda: box.router.state.verdict("gpu").usable, what="gpu probed")
        _, headers, _ = await post_chat(box, "private")
        assert headers["X-Mushishi-Backend"] == "gpu"
        status, _, body = await post_chat(box, "client")
        assert (status, body["error"]["code"]) == (503, "mode_mismatch")
        assert "mushishi-gpud is not on the bus" in body["error"]["message"]
        await gpud.connect(private_bus.address)  # back: followed again
        await until_mode(box, "creative")


@pytest.mark.parametrize("refusing", [True])
async def test_refused_connection_right_after_a_mode_change_is_starting_not_down(
    tmp_path: Path, private_bus: PrivateBus, gpud: GpuModeStandin, refusing: bool
) -> None:
    async with followed(tmp_path, private_bus) as box:
        await until_mode(box, "forensic")
        await box.gpu.refuse()
        gpud.set_mode("agent")  # vLLM of the new mode is still loading: refuses connections
        await wait_for(lambda: box.router.state.health("gpu").value == "starting",
                       what="gpu starting")
        assert box.router.status()["backends"]["gpu"]["reason"] == \
            "refusing connections while its GPU mode starts"
        assert refusing


async def test_the_request_that_asked_for_a_switch_waits_for_its_backends_first_probe(
    tmp_path: Path, private_bus: PrivateBus, gpud: GpuModeStandin
) -> None:
    # Issue 15 item 6: gpud announced the new mode once its tenant was READY, and in the
    # same millisecond the request that asked for it was answered 503 backend_failed
    # ("refusing connections while its GPU mode starts"): the router's board still held
    # the verdict of a probe made while the mode was starting.
    gpud.set_mode("off", "off")
    async with followed(tmp_path, private_bus,
                        client_extra='queue_timeout_s = 10\non_mode_mismatch = "switch"') as box:
        await until_mode(box, "off", "off")
        await box.gpu.refuse()  # the forensic tenant is not running yet
        gpud.switch_delay = 1.0
        gpud.before_ready = box.gpu.accept  # the tenant is READY when the switch ends
        asking = asyncio.create_task(post_chat(box, "client"))
        await wait_for(lambda: box.router.state.health("gpu").value == "starting",
                       what="gpu probed while its mode starts")
        status, headers, body = await asking
        assert (status, headers["X-Mushishi-Backend"]) == (200, "gpu"), body
        assert gpud.switch_reasons == ["request:profile=client"]
        await wait_for(lambda: box.router.state.gpu.last_switch_reason
                       == "request:profile=client", what="LastSwitchReason followed")
        assert box.router.status()["gpu"]["last_switch_reason"] == "request:profile=client"
