"""Adding up a tenant's places, and the Docker facts confinement reads."""

from __future__ import annotations

from mushishi.services.tenant.confinement import combine, env_warnings, forbidden_attachment
from mushishi.services.tenant.docker_api import ContainerFacts, facts
from mushishi.shared.config.gpu import PHONE_HOME_OFF
from mushishi.shared.confinement_probe import ProbeResult

YES = ProbeResult(True, "refused")
NO = ProbeResult(False, "it left")
UNKNOWN = ProbeResult(None, "no route")


def container(name: str, networks: tuple[str, ...] = ("mushishi-tenants",), mode: str = "",
              variables: dict[str, str] | None = None) -> ContainerFacts:
    return ContainerFacts(f"{name}-id", name, True, 7, networks, mode or networks[0],
                          variables or {})


def test_every_place_refused_is_confined_and_named() -> None:
    assert combine([("container a", YES)]) == ProbeResult(True, "from container a: refused")
    four = [(f"container {n}", YES) for n in "abcd"]
    assert combine(four).detail == ("from container a, container b, container c and 1 more: "
                                    "refused")


def test_one_place_that_leaves_decides_then_one_that_cannot_tell() -> None:
    assert combine([("a", YES), ("b", UNKNOWN), ("c", NO)]) == ProbeResult(False,
                                                                          "from c: it left")
    assert combine([("a", YES), ("b", UNKNOWN)]) == ProbeResult(None, "from b: no route")
    assert combine([("unit", YES)], "no container yet") == ProbeResult(None, "no container yet")
    assert combine([]) == ProbeResult(None, "nothing to probe yet")


def test_only_the_tenants_network_is_allowed() -> None:
    network = "mushishi-tenants"
    assert forbidden_attachment("t", [container("a")], network) is None
    assert forbidden_attachment("t", [container("a"), container(
        "b", ("bridge", "mushishi-tenants"))], network) == (
        "tenant t: container b is attached to network bridge; a Docker tenant may join only "
        "mushishi-tenants")
    assert "container h is attached to network host" in (
        forbidden_attachment("t", [container("h", ("host",))], network) or "")
    assert "network none" in (forbidden_attachment("t", [container("n", (), "none")],
                                                   network) or "")


def test_sharing_a_sibling_containers_network_is_allowed_a_strangers_is_not() -> None:
    network = "mushishi-tenants"
    sidecar = container("side", (), "container:a-id")
    assert forbidden_attachment("t", [container("a"), sidecar], network) is None
    stranger = container("side", (), "container:0123456789ab")
    assert forbidden_attachment("t", [container("a"), stranger], network) == (
        "tenant t: container side shares the network of container 0123456789ab, not one of "
        "this tenant's; a Docker tenant may join only mushishi-tenants")


def test_containers_without_the_phone_home_defaults_are_named() -> None:
    expected = {**PHONE_HOME_OFF, "HF_HUB_OFFLINE": "0"}
    good = container("good", variables=dict(expected))
    bad = container("bad", variables={"DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "0"})
    warnings = env_warnings("t", [good, bad], expected)
    assert warnings == {"bad-id": (
        "tenant t: container bad runs without VLLM_NO_USAGE_STATS=1, TRANSFORMERS_OFFLINE=1: "
        "list them under `environment:` in the compose file (or remove the -e that overrides "
        "them)")}


def test_facts_are_read_from_an_engine_inspection() -> None:
    inspected = {"Id": "abc", "Name": "/web", "State": {"Running": True, "Pid": 4242},
                 "NetworkSettings": {"Networks": {"mushishi-tenants": {}, "bridge": {}}},
                 "HostConfig": {"NetworkMode": "mushishi-tenants"},
                 "Config": {"Env": ["A=1", "B=x=y", "EMPTY"]}}
    assert facts(inspected) == ContainerFacts("abc", "web", True, 4242,
                                              ("bridge", "mushishi-tenants"),
                                              "mushishi-tenants",
                                              {"A": "1", "B": "x=y", "EMPTY": ""})
