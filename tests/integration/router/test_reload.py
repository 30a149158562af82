"""A reload swaps the whole route table at once: a request in flight finishes on the table it
started with, the next one runs on the new table."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from mushishi.shared.config import load_config
from tests.integration.router.harness import PERSONAL_KEY, Box

AUTH = {"Authorization": f"Bearer {PERSONAL_KEY}"}


async def test_a_stream_in_flight_finishes_on_the_old_table_and_the_next_uses_the_new(
        box: Box, tmp_path: Path) -> None:
    box.gpu.token_delay = 0.05
    path = tmp_path / "mushishi.toml"
    body = {"model": "private", "stream": True,
            "messages": [{"role": "user", "content": "a long private answer please"}]}
    async with aiohttp.ClientSession() as session:
        async with session.post(box.base_url + "/v1/chat/completions", json=body,
                                headers=AUTH) as stream:
            assert stream.headers["X-Mushishi-Backend"] == "gpu"
            assert (await stream.content.readline()).startswith(b"data: ")
            path.write_text(path.read_text().replace(
                '[profiles.private]\ntier = "T1"\nchain = ["gpu", "cpu"]',
                '[profiles.private]\ntier = "T1"\nchain = ["cpu"]'))
            assert box.router.reload(load_config(path).settings, str(path))
            rest = await stream.read()
        assert rest.rstrip().endswith(b"data: [DONE]")
        async with session.post(box.base_url + "/v1/chat/completions", headers=AUTH,
                                json={**body, "stream": False}) as answer:
            assert answer.status == 200
            assert answer.headers["X-Mushishi-Backend"] == "cpu"
        async with session.get(box.base_url + "/status") as response:
            status = await response.json()
    assert status["profiles"]["private"]["chain"] == ["cpu"]
    assert status["reload"]["pending_restart"] == []
    assert "reload applied" in status["reload"]["detail"]
