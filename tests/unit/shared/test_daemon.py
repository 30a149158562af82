"""The daemon scaffolding: real signals to this process, the config re-read from disk."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import pytest

from mushishi.shared.config import MushishiSettings, load_config
from mushishi.shared.daemon import reload_on_sighup, run_fast, stop_on_signals
from mushishi.shared.notify import Notifier
from tests.unit.shared.config_issues import MINIMAL as CONFIG


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_stop_on_signals_signal_sets_the_event(signum: signal.Signals) -> None:
    loop = asyncio.get_running_loop()
    try:
        stop = stop_on_signals()
        assert not stop.is_set()
        os.kill(os.getpid(), signum)
        async with asyncio.timeout(10):
            await stop.wait()
    finally:
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(number)


async def test_reload_on_sighup_valid_then_invalid_config(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "mushishi.toml"
    path.write_text(CONFIG)
    loaded = load_config(path)
    notifier = Notifier({})
    applied: list[MushishiSettings] = []
    reloaded = asyncio.Event()

    def status_line() -> str:
        reloaded.set()
        return f"{len(applied)} applied"

    loop = asyncio.get_running_loop()
    logger = logging.getLogger("mushishi.test-reload")
    try:
        reload_on_sighup(loaded, notifier, logger, applied.append, status_line)
        path.write_text(CONFIG.replace("8001", "8002"))
        os.kill(os.getpid(), signal.SIGHUP)
        async with asyncio.timeout(10):
            await reloaded.wait()
        assert [s.backends["cpu"].url for s in applied] == ["http://127.0.0.1:8002/v1"]
        assert list(notifier.sent) == ["RELOADING=1", "READY=1\nSTATUS=1 applied"]

        reloaded.clear()
        path.write_text(CONFIG + "\n[router]\nbogus = 1\n")
        with caplog.at_level(logging.ERROR, logger="mushishi.test-reload"):
            os.kill(os.getpid(), signal.SIGHUP)
            async with asyncio.timeout(10):
                await reloaded.wait()
        assert len(applied) == 1
        assert list(notifier.sent)[2:] == ["RELOADING=1", "READY=1\nSTATUS=1 applied"]
        refused = [r.getMessage() for r in caplog.records if r.name == "mushishi.test-reload"]
        assert refused and all(m.startswith("reload refused, keeping the running config: ")
                               for m in refused)
        assert any("router.bogus" in m for m in refused)
    finally:
        loop.remove_signal_handler(signal.SIGHUP)


def test_run_fast_returns_the_status_of_main_on_uvloop() -> None:
    async def main() -> int:
        return 7 if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else 1

    assert run_fast(main()) == 7  # the test extra installs uvloop ([fast])
