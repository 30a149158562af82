"""The Docker Engine client without a Docker daemon: an unreachable one is named with the
config key that points at it (against the real dockerd: tests/system/
test_tenant_confinement.py)."""

from __future__ import annotations

import pytest

from mushishi.services.tenant.docker_api import DockerEngine, DockerError


@pytest.mark.parametrize("call", ["running", "containers", "stop"])
def test_an_unreachable_docker_is_named_with_its_config_key(call: str) -> None:
    docker = DockerEngine("unix:///nonexistent/docker.sock")
    arguments = [["1" * 64]] if call == "stop" else []
    with pytest.raises(DockerError, match=r"cannot reach Docker at unix:///nonexistent/docker"
                       r"\.sock .*\[gpu\] docker_host"):
        getattr(docker, call)(*arguments)
