"""The egress is safe on its own: it refuses T1 work sent straight to its socket, whatever the
headers claim, and refuses any peer whose uid is not the router's."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from tests.integration.egress.harness import CHAT, running_egress

NOBODY = 65534


def refusals(box, reason: str) -> float:
    text = generate_latest(box.egress.registry).decode()
    prefix = f'mushishi_egress_sovereignty_refusals_total{{reason="{reason}"}} '
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    return float(lines[0].removeprefix(prefix)) if lines else 0.0


@pytest.mark.parametrize(("profile", "tier", "backend", "reason"), [
    ("private", "T1", "kimi", "sovereign_tier"),
    ("private", "T2", "kimi", "sovereign_tier"),  # a router lying about the tier
    ("client", "T1-strict", "groq", "sovereign_tier"),
    ("client", "T3", "kimi", "sovereign_tier"),
    ("personal", "T2", "gpu", "not_cloud"),
    ("personal", "T2", "openai", "unknown_backend"),
    ("cloudy", "T3", "groq", "not_in_chain"),
    ("personal", "T3", "kimi", "tier_mismatch"),
    ("ghost", "T2", "kimi", "unknown_profile"),
])
async def test_a_request_sent_straight_to_the_socket_is_refused_and_counted(
    tmp_path: Path, profile: str, tier: str, backend: str, reason: str,
) -> None:
    async with running_egress(tmp_path) as box:
        status, answer, _ = await box.post(backend, headers={
            "X-Mushishi-Profile": profile, "X-Mushishi-Tier": tier})
        assert (status, answer["error"]["code"]) == (403, "sovereignty_refused")
        assert refusals(box, reason) == 1.0
        assert box.kimi.requests == [] and box.groq.requests == []  # the cloud canaries
        assert box.egress.ledger.totals(backend).requests == 0


async def test_a_request_without_the_routing_headers_is_refused(tmp_path: Path) -> None:
    async with running_egress(tmp_path) as box, box.session() as session, session.post(
            "http://egress/v1/chat/completions", json={**CHAT, "model": "kimi"}) as response:
        answer = await response.json()
        assert (response.status, answer["error"]["code"]) == (403, "sovereignty_refused")
        assert refusals(box, "missing_headers") == 1.0
        assert box.kimi.requests == []


async def test_refusals_never_read_the_body(tmp_path: Path) -> None:
    async with running_egress(tmp_path) as box, box.session() as session, session.post(
            "http://egress/v1/chat/completions", data=b"not json at all",
            headers={"X-Mushishi-Profile": "private", "X-Mushishi-Tier": "T1",
                     "X-Mushishi-Backend": "kimi"}) as response:
        assert response.status == 403  # refused on the headers, before the body


def curl_as(uid: int, socket_path: str, headers: dict[str, str]) -> tuple[int, dict]:
    argv = ["curl", "-s", "--max-time", "20", "--unix-socket", socket_path, "-w", "\n%{http_code}",
            "-H", "Content-Type: application/json",
            *[part for name, value in headers.items() for part in ("-H", f"{name}: {value}")],
            "-d", json.dumps(CHAT), "http://egress/v1/chat/completions"]
    result = subprocess.run(argv, user=uid, capture_output=True, text=True, check=True,
                            cwd="/")
    body, _, code = result.stdout.rpartition("\n")
    return int(code), json.loads(body)


async def test_a_peer_with_another_uid_is_refused_and_the_allowed_uid_is_served(
    open_dir: Path,
) -> None:
    headers = {"X-Mushishi-Profile": "personal", "X-Mushishi-Tier": "T2",
               "X-Mushishi-Backend": "kimi"}
    async with running_egress(open_dir, allowed_peers=str(NOBODY)) as box:
        Path(box.socket_path).chmod(0o666)  # as if nobody were in group mushishi
        status, answer = await _as_root(box, headers)
        assert (status, answer["error"]["code"]) == (403, "peer_forbidden")
        assert "uid 0 may not use mushishi-egress" in answer["error"]["message"]
        assert box.kimi.requests == []
        text = generate_latest(box.egress.registry).decode()
        assert "mushishi_egress_peer_refusals_total 1.0" in text
        status, answer = await _run(curl_as, NOBODY, box.socket_path, headers)
        assert status == 200, answer
        assert len(box.kimi.chat_requests()) == 1
        status, answer = await _run(curl_as, NOBODY, box.socket_path, {
            **headers, "X-Mushishi-Profile": "private", "X-Mushishi-Tier": "T1"})
        assert (status, answer["error"]["code"]) == (403, "sovereignty_refused")
        assert len(box.kimi.chat_requests()) == 1


async def _as_root(box, headers: dict[str, str]) -> tuple[int, dict]:
    async with box.session() as session, session.post(
            "http://egress/v1/chat/completions", json=CHAT, headers=headers) as response:
        return response.status, await response.json()


async def _run(function, *args):
    return await asyncio.to_thread(function, *args)
