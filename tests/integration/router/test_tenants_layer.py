"""The fourth sovereignty layer in the real router: the tenants' published probes (real files,
read by the router's follower) show in /status, /ready and the metrics, and a tenant whose
probe left the box gets no more T1 work, while T2 work still reaches it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import aiohttp

from mushishi.shared.tenant_confinement import TenantRecord, write_record
from tests.integration.router.harness import Box, post_chat, running_box, wait_for
from tests.integration.router.test_observability import get

LEFT = "from container vllm: a datagram to 192.0.2.1:9 left: nothing refused it within 1 s"
REFUSED_BY = "the box's tenant firewall refused a datagram to 192.0.2.1:9"


def publish(run_dir: Path, confined: bool | None, detail: str) -> None:
    directory = run_dir / "vllm"
    directory.mkdir(parents=True, exist_ok=True)
    write_record(directory, TenantRecord("vllm", "docker", confined, detail, time.time(), 15.0,
                                         "192.0.2.1:9"))


async def status(box: Box) -> dict:
    code, _, raw = await get(box, "/status")
    assert code == 200
    return json.loads(raw)


async def test_an_unconfined_tenant_gets_no_more_t1_work_and_t2_still_reaches_it(
        tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    publish(run_dir, True, f"from container vllm: {REFUSED_BY}")
    async with running_box(tmp_path, tenants_run_dir=run_dir, gpu_tenant="vllm") as box:
        sovereignty = (await status(box))["sovereignty"]
        assert (sovereignty["tenants"], sovereignty["tenant_verdicts"]) == (True, {"vllm": True})
        assert sovereignty["summary"] == "config ✓, connect-time ✓, kernel ?, tenants ✓"
        code, headers, _ = await post_chat(box, "private")
        assert (code, headers["X-Mushishi-Backend"]) == (200, "gpu")

        publish(run_dir, False, LEFT)
        await wait_for(lambda: box.router.state.sovereign_refusals, what="the tenant refused")
        served_before = len(box.gpu.chat_requests())
        code, headers, _ = await post_chat(box, "private")  # T1: on to the CPU floor
        assert (code, headers["X-Mushishi-Backend"]) == (200, "cpu")
        code, headers, _ = await post_chat(box, "personal")  # T2: the tenant still serves it
        assert (code, headers["X-Mushishi-Backend"]) == (200, "gpu")
        assert len(box.gpu.chat_requests()) == served_before + 1

        report = await status(box)
        assert report["sovereignty"]["tenants"] is False
        assert report["sovereignty"]["tenants_detail"] == f"tenant vllm: {LEFT}"
        assert report["sovereignty"]["summary"].endswith("tenants ✗")
        assert report["profiles"]["private"]["would_use"] == "cpu"
        assert report["profiles"]["private"]["reason"] == (
            "cpu (healthy); skipped gpu: refused for T1: served by tenant vllm, which is not "
            f"confined (tenant vllm: {LEFT})")
        assert report["profiles"]["personal"]["would_use"] == "gpu"
        code, _, raw = await get(box, "/metrics")
        metrics = raw.decode()
        assert 'mushishi_router_sovereignty_layer{layer="tenants",state="failed"} 1.0' in metrics
        assert 'mushishi_router_sovereignty_refusals_total{layer="tenants"} 1.0' in metrics

        # With the CPU floor down too, T1 work is refused at once, naming the tenant.
        await box.cpu.refuse()
        await box.router.probe("cpu")
        code, _, body = await post_chat(box, "private")
        assert code == 503
        error = body["error"]
        assert error["code"] == "sovereign_backends_unavailable"
        assert "gpu: refused for T1: served by tenant vllm, which is not confined" in \
            error["message"]
        code, _, raw = await get(box, "/ready")
        ready = json.loads(raw)
        assert "private" not in ready["servable_profiles"]
        assert ready["sovereignty"]["tenants"] is False

        publish(run_dir, True, f"from container vllm: {REFUSED_BY}")  # the rule is back
        await wait_for(lambda: not box.router.state.sovereign_refusals,
                       what="the tenant confined again")
        code, headers, _ = await post_chat(box, "private")
        assert (code, headers["X-Mushishi-Backend"]) == (200, "gpu")
        assert (await status(box))["sovereignty"]["tenants"] is True


async def test_a_tenant_not_known_yet_is_shown_and_closes_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "vllm").mkdir(parents=True)  # started, not probed yet
    async with running_box(tmp_path, tenants_run_dir=run_dir, gpu_tenant="vllm") as box:
        connector = aiohttp.UnixConnector(path=box.unix_socket)
        async with aiohttp.ClientSession(connector=connector) as session, \
                session.get("http://router/ready") as response:
            ready = await response.json()
        assert ready["sovereignty"]["tenants"] is None
        assert ready["sovereignty"]["tenants_detail"] == "tenant vllm: not probed yet (starting)"
        assert ready["sovereignty"]["summary"].endswith("tenants ?")
        code, headers, _ = await post_chat(box, "private")
        assert (code, headers["X-Mushishi-Backend"]) == (200, "gpu")
