"""The audit of what left the box, against the real egress and stand-in providers: every
request recorded (served, refused, failed) with bytes and tokens and never any text, on disk
before its answer (SIGKILL right after loses nothing), pruned by retention, and read by
`mushishi audit` (JSON lines filtered by profile and time, the summary) as root and as a
member of the group that owns the state directory, while the egress runs and after."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mushishi.services.egress.ledger import read_audit
from mushishi.shared.config import load_config
from tests.integration.egress.harness import (
    HEADERS_T2,
    EgressBox,
    EgressProcess,
    config_text,
    running_egress,
    write_credentials,
)
from tests.paths import BINDIR
from tests.standins.cloud import CloudStandin, Fault

NOBODY = 65534
AUDIT_GROUP = 4242  # a group nobody belongs to, owning the state directory in one test


def marked() -> str:
    """A unique marker for one test's prompts: it must appear nowhere in the audit."""
    return f"audit-marker-{uuid.uuid4().hex}"


def chat(marker: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"the secret plan {marker}"}]}


def audit_cli(config: Path, *args: str, user: int | None = None,
              groups: list[int] | None = None) -> subprocess.CompletedProcess[str]:
    """`mushishi audit --config CONFIG ARGS…`, as the given user when asked."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUSHISHI_")}
    return subprocess.run([f"{BINDIR}/mushishi", "audit", "--config", str(config), *args],
                          capture_output=True, text=True, check=False, env=env, cwd="/",
                          user=user, group=NOBODY if user is not None else None,
                          extra_groups=groups)


def json_rows(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def state_bytes(state_dir: Path) -> bytes:
    """Every byte the egress keeps on disk (the ledger, its WAL and shared memory)."""
    return b"".join(path.read_bytes() for path in sorted(state_dir.iterdir()) if path.is_file())


async def raw_post(box: EgressBox, headers: dict[str, str], data: bytes) -> int:
    async with box.session() as session, session.post(
            "http://egress/v1/chat/completions", data=data,
            headers={"Content-Type": "application/json", **headers}) as response:
        await response.read()
        return response.status


async def test_every_request_is_recorded_with_bytes_and_tokens_and_never_text(
    tmp_path: Path,
) -> None:
    marker = marked()
    body = chat(marker)
    async with running_egress(tmp_path, kimi_extra="budget = { requests_per_day = 2 }") as box:
        status, answer, headers = await box.post("kimi", body)
        assert status == 200
        served_usage, served_size = answer["usage"], int(headers["Content-Length"])
        status, streamed = await box.stream("groq", body)
        assert status == 200 and streamed.rstrip().endswith(b"data: [DONE]")
        assert (await box.post("kimi", body))[0] == 200
        status, answer, _ = await box.post("kimi", body)  # the budget of 2 is spent
        assert (status, answer["error"]["code"]) == (429, "budget_exhausted")
        status, answer, _ = await box.post("kimi", body, headers={
            "X-Mushishi-Profile": "private", "X-Mushishi-Tier": "T1"})
        assert (status, answer["error"]["code"]) == (403, "sovereignty_refused")
        box.groq.fail_next(Fault.status_code(500, f"overloaded while reading {marker}"))
        assert (await box.post("groq", body))[0] == 500
        assert (await box.post("openai", body))[0] == 403  # no such backend
        payload = json.dumps(body).encode()
        assert await raw_post(box, {}, payload) == 403  # no routing headers at all
        assert await raw_post(box, {**HEADERS_T2, "X-Mushishi-Backend": "kimi"},
                              b"{" + payload) == 400  # not JSON
        kimi_sent, groq_sent = box.kimi.chat_requests(), box.groq.chat_requests()
        assert len(kimi_sent) == 2 and len(groq_sent) == 2

        result = audit_cli(box.config_path, "--json")  # while the egress runs
        rows = json_rows(result)
        human = audit_cli(box.config_path)
        assert human.returncode == 0, human.stderr
        state = state_bytes(Path(box.settings.egress.state_dir))

    shape = [(r["profile"], r["tier"], r["backend"], r["outcome"], r["reason"], r["status"])
             for r in rows]
    assert shape == [
        ("personal", "T2", "kimi", "served", "", 200),
        ("personal", "T2", "groq", "served", "", 200),
        ("personal", "T2", "kimi", "served", "", 200),
        ("personal", "T2", "kimi", "refused", "budget_exhausted", 429),
        ("private", "T1", "kimi", "refused", "sovereign_tier", 403),
        ("personal", "T2", "groq", "failed", "provider_error", 500),
        ("personal", "T2", "openai", "refused", "unknown_backend", 403),
        ("?", "?", "?", "refused", "missing_headers", 403),
        ("personal", "T2", "kimi", "refused", "invalid_request", 400),
    ]
    for row in rows:
        assert set(row) >= {"time", "request_id", "profile", "tier", "backend", "model",
                            "endpoint", "bytes_out", "bytes_in", "tokens", "outcome"}
        assert row["endpoint"] == "chat/completions" and row["request_id"]
        if row["outcome"] == "refused":  # nothing left the box
            assert (row["bytes_out"], row["bytes_in"], row["tokens"]) == (0, 0, 0), row
    served, streamed_row, _, _, t1, failed, *_ = rows
    # Bytes as they crossed the wire: the provider's Content-Length and the answer's size.
    assert served["bytes_out"] == int(kimi_sent[0].headers["Content-Length"])
    assert served["bytes_in"] == served_size
    assert served["tokens"] == served_usage["total_tokens"] and served["model"] == \
        "moonshotai/kimi-k2.6"
    assert streamed_row["bytes_out"] == int(groq_sent[0].headers["Content-Length"])
    assert streamed_row["bytes_in"] > 0 and streamed_row["tokens"] > 8
    assert failed["bytes_out"] == int(groq_sent[1].headers["Content-Length"])
    assert failed["bytes_in"] > 0 and failed["tokens"] == 0
    assert (t1["bytes_out"], t1["model"]) == (0, "moonshotai/kimi-k2.6")
    # The prompt, and a provider's error body quoting it, are nowhere.
    for text in (result.stdout, human.stdout, human.stderr):
        assert marker not in text
    assert marker.encode() not in state
    assert "the secret plan" not in human.stdout
    summary = human.stdout.split("what left the box, per profile:\n", 1)[1].splitlines()
    assert "  private: 0 requests left the box (1 refused)" in summary
    personal = [line for line in summary if line.startswith("  personal:")]
    assert personal[0].startswith("  personal: 4 requests, ")
    assert personal[0].endswith(" (1 failed, 3 refused)")
    assert "  client: 0 requests left the box" in summary
    assert "  ?: 0 requests left the box (1 refused)" in summary


async def test_a_peer_refused_at_the_socket_is_recorded(tmp_path: Path) -> None:
    async with running_egress(tmp_path, allowed_peers=str(NOBODY)) as box:
        status, answer, _ = await box.post("kimi", chat(marked()))
        assert (status, answer["error"]["code"]) == (403, "peer_forbidden")
        async with box.session() as session, session.get("http://egress/status") as response:
            assert response.status == 403  # not an API request: not in the audit
        rows = json_rows(audit_cli(box.config_path, "--json"))
    assert [(r["profile"], r["backend"], r["outcome"], r["reason"]) for r in rows] == [
        ("personal", "kimi", "refused", "peer_forbidden")]


async def test_audit_json_filters_by_profile_and_since(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    clock = {"now": now - timedelta(days=3)}
    async with running_egress(tmp_path, clock=lambda: clock["now"]) as box:
        assert (await box.post("kimi"))[0] == 200
        assert (await box.post("kimi", headers={"X-Mushishi-Profile": "cloudy",
                                                "X-Mushishi-Tier": "T3"}))[0] == 200
        clock["now"] = now
        assert (await box.post("groq"))[0] == 200
        assert (await box.post("kimi", headers={"X-Mushishi-Profile": "private",
                                                "X-Mushishi-Tier": "T1"}))[0] == 403
        config = box.config_path

    def shown(*args: str) -> list[tuple[str, str]]:
        return [(r["profile"], r["backend"]) for r in json_rows(audit_cli(config, "--json",
                                                                          *args))]

    everything = [("personal", "kimi"), ("cloudy", "kimi"), ("personal", "groq"),
                  ("private", "kimi")]
    assert shown() == everything
    assert shown("--since", "1d") == everything[2:]
    assert shown("--since", "4d") == everything
    assert shown("--from", (now - timedelta(days=1)).isoformat()) == everything[2:]
    assert shown("--profile", "personal") == [("personal", "kimi"), ("personal", "groq")]
    assert shown("--profile", "private", "--since", "2d") == [("private", "kimi")]
    assert shown("--profile", "cloudy", "--since", "2d") == []
    human = audit_cli(config, "--profile", "cloudy", "--since", "2d")
    assert human.returncode == 0, human.stderr
    assert human.stdout.rstrip().endswith("what left the box, per profile:\n"
                                          "  cloudy: 0 requests left the box")


@pytest.mark.parametrize(("args", "message"), [
    (["--since", "7x"], "--since '7x' is not a duration: use a number and a unit, s, m, h, d "
                        "or w"),
    (["--from", "last tuesday"], "--from 'last tuesday' is not a time: use YYYY-MM-DD"),
    (["--profile", "ghost"], "no profile 'ghost' in"),
])
async def test_bad_input_is_refused_naming_what_to_fix(
    tmp_path: Path, args: list[str], message: str,
) -> None:
    async with running_egress(tmp_path) as box:
        result = audit_cli(box.config_path, *args)
    assert result.returncode == 2
    assert message in result.stderr, result.stderr


async def test_a_missing_audit_names_the_state_dir(tmp_path: Path) -> None:
    config = tmp_path / "mushishi.toml"
    config.write_text(config_text(tmp_path, kimi_port=1, groq_port=2))
    result = audit_cli(config)
    assert result.returncode == 1
    assert f"egress.state_dir = {tmp_path}/egress-state" in result.stderr, result.stderr
    assert not (tmp_path / "egress-state").exists()  # reading never creates it


async def test_retention_prunes_old_rows_and_keeps_the_rest(tmp_path: Path) -> None:
    now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    clock = {"now": now - timedelta(days=40)}
    async with running_egress(tmp_path, clock=lambda: clock["now"],
                              egress_extra="audit_retention_days = 30") as box:
        assert (await box.post("kimi"))[0] == 200
        assert (await box.post("kimi", headers={"X-Mushishi-Profile": "private",
                                                "X-Mushishi-Tier": "T1"}))[0] == 403
        clock["now"] = now - timedelta(days=20)
        assert (await box.post("groq"))[0] == 200
        clock["now"] = now
        state = box.settings.egress.state_dir
        assert len(read_audit(state)) == 3
        pruned = box.egress.prune_audit()
        assert pruned is not None and await pruned == 2
        assert (await box.post("kimi"))[0] == 200  # the egress serves on
        rows = read_audit(state)
    assert [(e.time, e.backend) for e in rows] == [(now - timedelta(days=20), "groq"),
                                                   (now, "kimi")]


async def test_the_record_survives_sigkill_right_after_the_answer(
    tmp_path: Path, providers: tuple[CloudStandin, CloudStandin],
) -> None:
    kimi, groq = providers
    marker = marked()
    config = tmp_path / "mushishi.toml"
    config.write_text(config_text(tmp_path, kimi_port=kimi.port, groq_port=groq.port))
    state = Path(load_config(config).settings.egress.state_dir)
    egress = EgressProcess(config, {"kimi.test": kimi.host, "groq.test": groq.host},
                           write_credentials(tmp_path / "credentials"), tmp_path / "egress.log")
    try:
        await egress.start()
        for profile, tier, expected in (("private", "T1", 403), ("personal", "T2", 200)):
            async with egress.session() as session, session.post(
                    "http://egress/v1/chat/completions", json=chat(marker), headers={
                        "X-Mushishi-Profile": profile, "X-Mushishi-Tier": tier,
                        "X-Mushishi-Backend": "kimi"}) as response:
                await response.read()
                assert response.status == expected
        assert egress.kill(signal.SIGKILL) == -signal.SIGKILL  # at once after the answer
        dead = json_rows(audit_cli(config, "--json"))  # no daemon: read from the file
        assert [(r["profile"], r["outcome"]) for r in dead] == [("private", "refused"),
                                                                ("personal", "served")]
        assert dead[1]["tokens"] > 0 and dead[1]["bytes_in"] > 0

        kimi.token_delay, kimi.tokens = 0.05, 400  # a 20 s stream, cut by a SIGKILL
        await egress.start()
        async with egress.session() as session, session.post(
                "http://egress/v1/chat/completions", json={**chat(marker), "stream": True},
                headers={**HEADERS_T2, "X-Mushishi-Backend": "kimi"}) as response:
            for _ in range(5):
                await response.content.readline()
            assert egress.kill(signal.SIGKILL) == -signal.SIGKILL
        kimi.token_delay, kimi.tokens = 0.0, 8
        await egress.start()  # settles the stream's reservation: failed, interrupted
        rows = json_rows(audit_cli(config, "--json"))
        assert [(r["profile"], r["outcome"], r["reason"]) for r in rows] == [
            ("private", "refused", "sovereign_tier"), ("personal", "served", ""),
            ("personal", "failed", "interrupted")]
        assert rows[:2] == dead  # nothing rewritten by the restarts
        assert rows[2]["bytes_out"] > 0 and rows[2]["tokens"] > 0
        assert marker.encode() not in state_bytes(state)
    finally:
        egress.stop()


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


async def test_a_member_of_the_owning_group_reads_it_while_the_egress_runs_and_after(
    open_dir: Path,
) -> None:
    """As the unit runs it (UMask=0027, StateDirectoryMode=0750): the group may read, and a
    read-only reader disturbs nothing."""
    state = open_dir / "egress-state"
    state.mkdir(mode=0o750)
    os.chown(state, 0, AUDIT_GROUP)
    with umask(0o027):
        async with running_egress(open_dir) as box:
            (open_dir / "mushishi.toml").chmod(0o644)
            assert (await box.post("kimi"))[0] == 200
            for path in state.iterdir():
                os.chown(path, 0, AUDIT_GROUP)
            before = sorted((p.name, p.stat().st_uid) for p in state.iterdir())
            running = await asyncio.to_thread(audit_cli, box.config_path, "--json",
                                              user=NOBODY, groups=[AUDIT_GROUP])
            assert [r["outcome"] for r in json_rows(running)] == ["served"]
            outsider = await asyncio.to_thread(audit_cli, box.config_path, user=NOBODY,
                                               groups=[])
            assert outsider.returncode == 1
            assert "permission denied (run as root or as a member of group mushishi)" in \
                outsider.stderr, outsider.stderr
            assert (await box.post("groq"))[0] == 200  # the egress never noticed
            assert sorted((p.name, p.stat().st_uid) for p in state.iterdir()) == before
    stopped = audit_cli(open_dir / "mushishi.toml", "--json", user=NOBODY,
                        groups=[AUDIT_GROUP])
    assert [r["backend"] for r in json_rows(stopped)] == ["kimi", "groq"]
