"""Reading a tenant's argv: docker/podman run options up to the image, compose, runtimes."""

from __future__ import annotations

import pytest

from mushishi.shared.tenant_commands import (
    compose_command,
    parse_run,
    requested_networks,
    runtime_problem,
    splits_cgroups,
)


@pytest.mark.parametrize(("command", "run_index", "image"), [
    (["docker", "run", "img"], 1, "img"),
    (["/usr/bin/docker", "-H", "unix:///x.sock", "container", "run", "--rm", "img"], 4, "img"),
    (["docker", "--debug", "run", "-it", "--gpus", "all", "img", "serve"], 2, "img"),
    (["docker", "run", "-dit", "--name=x", "-e", "A=1", "--", "img"], 1, "img"),
    (["podman", "--root", "/r", "run", "--cgroups", "split", "img"], 3, "img"),
])
def test_run_options_are_read_up_to_the_image(command: list[str], run_index: int,
                                              image: str) -> None:
    run = parse_run(command)
    assert run is not None and run.run_index == run_index
    assert run.image_index is not None and command[run.image_index] == image


@pytest.mark.parametrize("command", [
    ["docker", "compose", "up"], ["docker", "ps"], ["python3", "run", "x"], ["podman"],
    ["docker", "-H"],
])
def test_commands_that_are_not_a_run(command: list[str]) -> None:
    assert parse_run(command) is None


def test_networks_come_from_network_options_before_the_image_only() -> None:
    run = parse_run(["docker", "run", "--net", "a", "--network=b", "img", "--network", "c"])
    assert run is not None and requested_networks(run) == ["a", "b"]
    plain = parse_run(["docker", "run", "--rm", "img"])
    assert plain is not None and requested_networks(plain) == ["bridge"]


def test_split_cgroups_in_both_spellings() -> None:
    for spelling in (["--cgroups=split"], ["--cgroups", "split"]):
        run = parse_run(["podman", "run", *spelling, "img"])
        assert run is not None and splits_cgroups(run)
    after_image = parse_run(["podman", "run", "img", "--cgroups=split"])
    assert after_image is not None and not splits_cgroups(after_image)


def test_compose_subcommands_keep_the_global_options() -> None:
    up = ["docker", "compose", "-f", "/c.yml", "-p", "vllm", "up", "--wait"]
    assert compose_command(up, "ps", "-q") == ["docker", "compose", "-f", "/c.yml", "-p",
                                                "vllm", "ps", "-q"]
    assert compose_command(["docker-compose", "up"], "down") == ["docker-compose", "down"]
    assert compose_command(["docker", "compose", "ps"], "down") is None
    assert compose_command(["docker", "run", "up"], "down") is None


@pytest.mark.parametrize(("runtime", "command", "problem"), [
    ("process", ["/usr/bin/vllm", "serve"], None),
    ("process", ["docker", "compose", "up"], 'set runtime = "docker"'),
    ("process", ["/usr/bin/podman", "run", "img"], 'set runtime = "podman"'),
    ("process", ["docker-compose", "up"], 'set runtime = "docker"'),
    ("docker", ["docker", "compose", "-f", "x.yml", "up"], None),
    ("docker", ["docker-compose", "up"], None),
    ("docker", ["/usr/bin/docker", "run", "--network=n", "img"], None),
    ("docker", ["docker", "run", "--rm"], "names no image"),
    ("docker", ["docker", "start", "x"], "must be `docker run …` or `docker compose … up`"),
    ("docker", ["podman", "run", "img"], "must be `docker run …`"),
    ("podman", ["podman", "run", "--cgroups=split", "img"], None),
    ("podman", ["podman", "run", "img"], "add --cgroups=split"),
    ("podman", ["docker", "run", "--cgroups=split", "img"], "must be `podman run …`"),
])
def test_the_command_must_be_one_its_runtime_confines(runtime: str, command: list[str],
                                                      problem: str | None) -> None:
    found = runtime_problem(runtime, command)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found
