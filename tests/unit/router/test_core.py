"""The pure routing core: hop judgement, pins, mode gates, fallback classes, final errors."""

from __future__ import annotations

import pytest

from mushishi.services.router.core import (
    GPU_ABSENT,
    ErrorCode,
    Failure,
    GpuView,
    Health,
    Hop,
    HopFailure,
    ModeGate,
    RouteProfile,
    dwell_left,
    final_error,
    idle_return_due,
    judge_hop,
    mode_gate,
    mode_need,
    pin_hops,
    preview,
    serving_hops,
    sovereign_refusal,
    split_model,
    status_is_retryable,
    t1_should_wait,
)

GPU = Hop("gpu", "gpu-model", True, "127.0.0.1", modes=frozenset({"forensic", "agent"}),
          max_concurrency=4)
CPU = Hop("cpu", "cpu-alias", True, "127.0.0.1")
KIMI = Hop("kimi", "moonshotai/kimi-k2.6", False, "cloud")
PERSONAL = RouteProfile("personal", "T2", (GPU, CPU, KIMI))
PRIVATE = RouteProfile("private", "T1", (GPU, CPU), queue_timeout_s=120)
CLIENT = RouteProfile("client", "T1-strict", (GPU,), require_mode="forensic")
FORENSIC = GpuView(True, "forensic", "ready")


@pytest.mark.parametrize(("hop", "health", "gpu", "usable", "state"), [
    (GPU, Health.UP, FORENSIC, True, "up"),
    (GPU, Health.UP, GpuView(True, "creative", "ready"), False, "mode_inactive"),
    (GPU, Health.UP, GpuView(True, "forensic", "switching"), False, "switching"),
    (GPU, Health.UP, GpuView(True, "forensic", "failed"), False, "mode_inactive"),
    (GPU, Health.UP, GPU_ABSENT, True, "up"),  # no gpud: health alone decides
    (GPU, Health.DOWN, GPU_ABSENT, False, "down"),
    (GPU, Health.STARTING, FORENSIC, False, "starting"),
    (GPU, Health.UNKNOWN, FORENSIC, True, "unknown"),
    (CPU, Health.UP, GpuView(True, "creative", "ready"), True, "up"),  # no modes: always up
    (KIMI, Health.UP, FORENSIC, True, "cloud"),
])
def test_judge_hop_table(hop: Hop, health: Health, gpu: GpuView, usable: bool,
                         state: str) -> None:
    verdict = judge_hop(hop, health, "", gpu)
    assert (verdict.usable, verdict.state) == (usable, state)


def test_mode_inactive_reason_names_the_mode_and_the_backend_modes() -> None:
    verdict = judge_hop(GPU, Health.UP, "", GpuView(True, "creative", "ready"))
    assert verdict.reason == "GPU mode is creative (ready); gpu runs in agent, forensic"


@pytest.mark.parametrize(("pin", "expected"), [
    (None, ("gpu", "cpu", "kimi")),
    ("cpu", ("cpu",)),
    ("cpu-alias", ("cpu",)),
    ("moonshotai/kimi-k2.6", ("kimi",)),
    ("groq", None),  # not in the chain: a pin never widens it
])
def test_pin_only_narrows_the_chain(pin: str | None, expected: tuple[str, ...] | None) -> None:
    hops = pin_hops(PERSONAL, pin)
    assert (None if hops is None else tuple(h.name for h in hops)) == expected


@pytest.mark.parametrize(("model", "expected"), [
    ("private", ("private", None)),
    ("private/cpu-alias", ("private", "cpu-alias")),
    ("personal/moonshotai/kimi-k2.6", ("personal", "moonshotai/kimi-k2.6")),
    ("gpt-4o", ("gpt-4o", None)),
    ("private/", ("private/", None)),
])
def test_split_model(model: str, expected: tuple[str, str | None]) -> None:
    assert split_model(model, ["private", "personal"]) == expected


@pytest.mark.parametrize(("gpu", "gate"), [
    (FORENSIC, ModeGate.OPEN),
    (GpuView(True, "agent", "ready"), ModeGate.MISMATCH),
    (GpuView(True, "forensic", "switching"), ModeGate.WAIT),
    (GpuView(True, "forensic", "failed"), ModeGate.MISMATCH),
    (GPU_ABSENT, ModeGate.MISMATCH),  # unknown mode fails closed
])
def test_mode_gate_of_a_profile_requiring_forensic(gpu: GpuView, gate: ModeGate) -> None:
    assert mode_gate(CLIENT, gpu)[0] is gate
    assert mode_gate(PRIVATE, gpu)[0] is ModeGate.OPEN


@pytest.mark.parametrize(("status", "retry"), [
    (200, False), (201, False), (400, False), (413, False), (422, False),
    (401, True), (403, True), (404, True), (408, True), (429, True), (500, True), (502, True),
    (503, True), (504, True), (301, True), (307, True),
])
def test_status_is_retryable(status: int, retry: bool) -> None:
    assert status_is_retryable(status) is retry


def failure(kind: Failure, backend: str = "gpu") -> HopFailure:
    return HopFailure(backend, kind, kind.value, cloud=kind in (Failure.BUDGET, Failure.EGRESS))


@pytest.mark.parametrize(("profile", "kinds", "waits"), [
    (PRIVATE, [Failure.UNAVAILABLE, Failure.CONNECT], True),
    (PRIVATE, [Failure.STATUS, Failure.TIMEOUT], True),
    (PRIVATE, [Failure.STATUS, Failure.STATUS], False),  # both answered: no point waiting
    (PRIVATE, [Failure.FULL], True),
    (PERSONAL, [Failure.UNAVAILABLE, Failure.CONNECT], False),  # only T1 queues
    (CLIENT, [Failure.UNAVAILABLE], False),
])
def test_t1_should_wait(profile: RouteProfile, kinds: list[Failure], waits: bool) -> None:
    assert t1_should_wait(profile, [failure(k) for k in kinds]) is waits


@pytest.mark.parametrize(("profile", "kinds", "code"), [
    (CLIENT, [Failure.CONNECT], ErrorCode.BACKEND_FAILED),
    (PRIVATE, [Failure.UNAVAILABLE, Failure.CONNECT], ErrorCode.SOVEREIGN_BACKENDS_UNAVAILABLE),
    (PRIVATE, [Failure.STATUS, Failure.STATUS], ErrorCode.ALL_BACKENDS_FAILED),
    (PERSONAL, [Failure.UNAVAILABLE, Failure.CONNECT, Failure.BUDGET],
     ErrorCode.BUDGET_EXHAUSTED),
    (PERSONAL, [Failure.STATUS, Failure.BUDGET, Failure.EGRESS], ErrorCode.ALL_BACKENDS_FAILED),
    (PERSONAL, [Failure.UNAVAILABLE, Failure.UNAVAILABLE, Failure.BUDGET],
     ErrorCode.BUDGET_EXHAUSTED),
    (PERSONAL, [Failure.STATUS, Failure.STATUS, Failure.EGRESS], ErrorCode.ALL_BACKENDS_FAILED),
])
def test_final_error_table(profile: RouteProfile, kinds: list[Failure],
                           code: ErrorCode) -> None:
    found, message = final_error(profile, [failure(k, f"hop{i}") for i, k in enumerate(kinds)])
    assert found is code
    assert "hop0" in message


def test_t1_final_error_says_private_work_never_goes_to_the_cloud() -> None:
    _, message = final_error(PRIVATE, [failure(Failure.CONNECT)], waited=True)
    assert "after waiting 120s" in message and "never goes to the cloud" in message


def test_preview_names_skipped_hops_and_the_hop_that_would_answer() -> None:
    verdicts = {
        "gpu": judge_hop(GPU, Health.UP, "", GpuView(True, "creative", "ready")),
        "cpu": judge_hop(CPU, Health.UP, "healthy", GpuView(True, "creative", "ready")),
        "kimi": judge_hop(KIMI, Health.UP, "", GPU_ABSENT),
    }
    view = preview(PRIVATE, verdicts, GpuView(True, "creative", "ready"))
    assert view.would_use == "cpu"
    assert view.reason == ("cpu (healthy); skipped gpu: GPU mode is creative (ready); gpu runs "
                           "in agent, forensic")
    view = preview(CLIENT, verdicts, GpuView(True, "creative", "ready"))
    assert view.would_use is None and "would answer mode_mismatch" in view.reason


def test_preview_of_t1_with_every_hop_down_says_it_would_queue() -> None:
    verdicts = {"gpu": judge_hop(GPU, Health.DOWN, "connection refused", GPU_ABSENT),
                "cpu": judge_hop(CPU, Health.STARTING, "loading model", GPU_ABSENT),
                "kimi": judge_hop(KIMI, Health.UP, "", GPU_ABSENT)}
    view = preview(PRIVATE, verdicts, GPU_ABSENT)
    assert view.would_use is None
    assert view.reason.startswith("would queue up to 120s, then answer "
                                  "sovereign_backends_unavailable: gpu: connection refused; "
                                  "cpu: loading model")
    assert preview(PERSONAL, verdicts, GPU_ABSENT).would_use == "kimi"


def test_compile_table_never_counts_the_egress_socket_as_a_local_hop(tmp_path) -> None:
    """The config check refuses it; compile_table must not trust that it ran."""
    from mushishi.services.router.core import compile_table as compile_routes
    from mushishi.shared.config import MushishiSettings

    settings = MushishiSettings.model_validate({
        "backends": {"out": {"url": "unix:/run/mushishi/egress.sock", "model": "m"}},
        "profiles": {"private": {"tier": "T1", "chain": ["out"]}},
    })
    with pytest.raises(ValueError, match="names a non-local backend"):
        compile_routes(settings, lambda _peer: None)


REFUSED = {"gpu": "served by tenant vllm, which is not confined (tenant vllm: it left the box)"}


@pytest.mark.parametrize(("profile", "hop", "expected"), [
    (PRIVATE, GPU, "refused for T1: " + REFUSED["gpu"]),
    (CLIENT, GPU, "refused for T1-strict: " + REFUSED["gpu"]),
    (PERSONAL, GPU, None),  # T2 work may reach the cloud anyway: the tenant still serves it
    (PRIVATE, CPU, None),   # another backend
])
def test_sovereign_refusal_closes_an_unconfined_tenant_to_t1_only(
        profile: RouteProfile, hop: Hop, expected: str | None) -> None:
    assert sovereign_refusal(profile, hop, REFUSED) == expected
    assert sovereign_refusal(profile, hop, {}) is None


def test_preview_skips_a_backend_refused_for_t1_and_names_why() -> None:
    verdicts = {"gpu": judge_hop(GPU, Health.UP, "healthy", FORENSIC),
                "cpu": judge_hop(CPU, Health.UP, "healthy", FORENSIC),
                "kimi": judge_hop(KIMI, Health.UP, "", FORENSIC)}
    view = preview(PRIVATE, verdicts, FORENSIC, refused=REFUSED)
    assert view.would_use == "cpu"
    assert view.reason == f"cpu (healthy); skipped gpu: refused for T1: {REFUSED['gpu']}"
    assert preview(PERSONAL, verdicts, FORENSIC, refused=REFUSED).would_use == "gpu"
    view = preview(CLIENT, verdicts, FORENSIC, refused=REFUSED)
    assert view.would_use is None
    assert view.reason == f"would answer backend_failed: gpu: refused for T1-strict: " \
                          f"{REFUSED['gpu']}"


def test_serving_hops_keeps_the_chain_order_of_the_hops_that_serve_the_endpoint() -> None:
    chat = Hop("cpu", "m", True, "loopback")
    whisper = Hop("whisper", "w", True, "loopback",
                  endpoints=frozenset({"audio/transcriptions", "audio/translations"}))
    cloud = Hop("groq", "g", False, "cloud",
                endpoints=frozenset({"chat/completions", "audio/transcriptions"}))
    chain = (chat, whisper, cloud)
    assert serving_hops(chain, "audio/transcriptions") == (whisper, cloud)
    assert serving_hops(chain, "embeddings") == (chat,)
    assert serving_hops(chain, "rerank") == ()
    assert serving_hops((chat, cloud), "chat/completions") == (chat, cloud)
    assert serving_hops(chain, "responses", "chat/completions") == (chat, cloud)
    assert serving_hops(chain, "rerank", "audio/translations") == (whisper,)
    profile = RouteProfile("p", "T2", chain)
    assert "audio/translations" in profile.endpoints and "rerank" not in profile.endpoints


def test_responses_are_served_by_hops_that_serve_them_or_chat() -> None:
    chat = Hop("cpu", "m", True, "loopback")
    native = Hop("vllm", "v", True, "loopback", endpoints=frozenset({"responses"}))
    whisper = Hop("whisper", "w", True, "loopback",
                  endpoints=frozenset({"audio/transcriptions"}))
    assert serving_hops((native, whisper, chat), "responses") == (native, chat)
    assert "responses" in RouteProfile("p", "T2", (chat,)).endpoints
    assert "responses" not in RouteProfile("p", "T2", (whisper,)).endpoints


# -- modes that follow the work (issue 15 item 6) ------------------------------------------

SWITCHING_GPU = Hop("gpu", "gpu-model", True, "127.0.0.1",
                    modes=frozenset({"forensic", "agent"}), switch_mode="agent")
CREATIVE_HOP = Hop("comfy", "flux", True, "127.0.0.1", modes=frozenset({"creative"}),
                   switch_mode="creative")


def _need(profile: RouteProfile, gpu: GpuView, health: dict[str, Health] | None = None):
    healths = health or {}

    def verdict(name: str):
        hop = next(h for h in profile.hops if h.name == name)
        return judge_hop(hop, healths.get(name, Health.UP), "", gpu)
    return mode_need(profile, profile.hops, verdict, gpu)


@pytest.mark.parametrize(("gpu", "gate", "mode"), [
    (GpuView(True, "creative", "ready"), ModeGate.MISMATCH, "agent"),  # first listed mode
    (GpuView(True, "off", "off"), ModeGate.MISMATCH, "agent"),
    (GpuView(True, "agent", "ready"), ModeGate.OPEN, None),
    (GpuView(True, "forensic", "ready"), ModeGate.OPEN, None),  # any of its modes will do
    (GpuView(True, "creative", "switching"), ModeGate.WAIT, "agent"),
    (GPU_ABSENT, ModeGate.OPEN, None),  # no gpud: health alone decides
])
def test_a_switching_t2_profile_needs_the_mode_of_the_first_hop(
        gpu: GpuView, gate: ModeGate, mode: str | None) -> None:
    profile = RouteProfile("coder", "T2", (SWITCHING_GPU, CPU, KIMI),
                           on_mode_mismatch="switch")
    need = _need(profile, gpu)
    assert (need.gate, need.mode) == (gate, mode)
    if gate is ModeGate.MISMATCH:
        assert need.why == (f"profile 'coder' needs GPU mode 'agent' for gpu; the GPU is in "
                            f"{gpu.active_mode} ({gpu.state})")


def test_without_switch_a_profile_never_needs_a_mode() -> None:
    profile = RouteProfile("coder", "T2", (SWITCHING_GPU, CPU))
    assert _need(profile, GpuView(True, "creative", "ready")).gate is ModeGate.OPEN


def test_an_earlier_hop_that_can_answer_needs_no_switch() -> None:
    profile = RouteProfile("cheap", "T1", (CPU, CREATIVE_HOP), on_mode_mismatch="switch")
    assert _need(profile, GpuView(True, "agent", "ready")).gate is ModeGate.OPEN
    # The CPU floor down: the creative hop is the one that can answer, after a switch.
    need = _need(profile, GpuView(True, "agent", "ready"), {"cpu": Health.DOWN})
    assert (need.gate, need.mode) == (ModeGate.MISMATCH, "creative")


def test_a_failed_mode_of_the_hop_is_not_a_reason_to_switch() -> None:
    profile = RouteProfile("coder", "T2", (SWITCHING_GPU, CPU), on_mode_mismatch="switch")
    # gpu runs in agent, which failed: asking gpud for agent again would loop on a fault.
    assert _need(profile, GpuView(True, "agent", "failed")).gate is ModeGate.OPEN


def test_require_mode_keeps_its_gate() -> None:
    need = _need(CLIENT, GpuView(True, "agent", "ready"))
    assert (need.gate, need.mode) == (ModeGate.MISMATCH, "forensic")


@pytest.mark.parametrize(("since", "now", "dwell", "left"), [
    (float("-inf"), 10.0, 120.0, 0.0),  # no switch seen since the router started
    (100.0, 130.0, 120.0, 90.0),
    (100.0, 220.0, 120.0, 0.0),
    (100.0, 101.0, 0.0, 0.0),
])
def test_dwell_left(since: float, now: float, dwell: float, left: float) -> None:
    assert dwell_left(since, now, dwell) == left


@pytest.mark.parametrize(("gpu", "idle_mode", "quiet_since", "due"), [
    (GpuView(True, "creative", "ready"), "agent", 0.0, True),
    (GpuView(True, "creative", "ready"), "agent", 50.0, False),  # quiet for 50 s only
    (GpuView(True, "agent", "ready"), "agent", 0.0, False),  # there already
    (GpuView(True, "off", "off"), "agent", 0.0, False),  # a person's off is kept
    (GpuView(True, "creative", "failed"), "agent", 0.0, False),  # a fault is not idleness
    (GpuView(True, "creative", "switching"), "agent", 0.0, False),
    (GPU_ABSENT, "agent", 0.0, False),
    (GpuView(True, "creative", "ready"), None, 0.0, False),  # no idle_mode configured
])
def test_idle_return_due(gpu: GpuView, idle_mode: str | None, quiet_since: float,
                         due: bool) -> None:
    assert idle_return_due(gpu, idle_mode, quiet_since, 100.0, 60.0) is due


def test_preview_of_a_switching_profile_says_it_would_ask_gpud() -> None:
    profile = RouteProfile("coder", "T2", (SWITCHING_GPU, CPU), on_mode_mismatch="switch")
    gpu = GpuView(True, "creative", "ready")
    verdicts = {hop.name: judge_hop(hop, Health.UP, "", gpu) for hop in profile.hops}
    shown = preview(profile, verdicts, gpu)
    assert shown.would_use is None
    assert shown.reason.endswith("would ask gpud to switch to agent")
