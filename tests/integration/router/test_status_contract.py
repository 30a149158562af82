"""The router's GET /status is the contract of shared/router_status.py: the body the real
router sends, following a gpud on the bus, parses into the typed RouterStatus and comes
back from it unchanged, and the one client reads it over the unix socket."""

from __future__ import annotations

import json
from pathlib import Path

from mushishi.shared.local_http import http_get
from mushishi.shared.router_status import RouterStatus, read_status
from tests.integration.router.harness import Box, running_box, wait_for
from tests.standins.bus import PrivateBus
from tests.standins.gpumode import GpuModeStandin


async def body_round_trips(box: Box) -> RouterStatus:
    status, body = await http_get("/status", unix_socket=box.unix_socket)
    assert status == 200
    document = json.loads(body)
    parsed = RouterStatus.from_json(document)
    assert parsed.to_json() == document
    return parsed


async def test_the_routers_status_is_the_typed_contract(box: Box) -> None:
    parsed = await body_round_trips(box)
    assert set(parsed.backends) >= {"gpu", "cpu"} and parsed.profiles
    assert any(not backend.local for backend in parsed.backends.values())  # a cloud hop too
    reading = await read_status(box.unix_socket)
    assert reading.status == "ok"
    assert reading.value().profiles == parsed.profiles
    # DESIGN.md §9: what each backend and each profile's chain serve.
    assert parsed.backends["gpu"].endpoints == ["chat/completions", "completions",
                                                "embeddings"]
    # A chat chain serves Responses too: the router translates it to chat.
    assert parsed.profiles["private"].endpoints == ["chat/completions", "completions",
                                                    "embeddings", "responses"]
    # A router older than §9 sends no endpoints: still the contract.
    answered, body = await http_get("/status", unix_socket=box.unix_socket)
    assert answered == 200
    older = json.loads(body)
    for entry in (*older["backends"].values(), *older["profiles"].values()):
        del entry["endpoints"]
    assert RouterStatus.from_json(older).profiles["private"].endpoints is None


async def test_the_contract_holds_while_following_gpud(
        tmp_path: Path, private_bus: PrivateBus, gpud: GpuModeStandin) -> None:
    async with running_box(tmp_path, bus_address=private_bus.address,
                           follow_gpu=True) as box:
        await wait_for(lambda: box.router.state.gpu.present, what="gpud followed")
        parsed = await body_round_trips(box)
    assert (parsed.gpu.present, parsed.gpu.active_mode, parsed.gpu.state) == (
        True, "forensic", "ready")
    assert parsed.backends["gpu"].modes is not None
