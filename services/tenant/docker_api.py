"""The one client of the Docker Engine API (the official `docker` SDK, at `[gpu] docker_host`):
the network Docker tenants run on, the facts about their containers that confinement needs,
and the running containers the stop-list may stop.

Blocking calls: the runner runs them in a thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any

MANAGED_LABEL = "io.mushishi.managed"
BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"


class DockerError(Exception):
    """Docker cannot be reached, or is not as it must be; the message names the fix."""


@dataclass(frozen=True, slots=True)
class Container:
    """A running Docker container, as the Engine API lists it."""

    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ContainerFacts:
    """One container, as `docker inspect` shows it."""

    id: str
    name: str
    running: bool
    pid: int
    networks: tuple[str, ...]
    network_mode: str
    variables: dict[str, str]


def facts(inspected: dict[str, Any]) -> ContainerFacts:
    """The fields of an Engine API container inspection that confinement reads."""
    state = inspected.get("State") or {}
    settings = inspected.get("NetworkSettings") or {}
    variables = {}
    for entry in (inspected.get("Config") or {}).get("Env") or []:
        key, _, value = str(entry).partition("=")
        variables[key] = value
    return ContainerFacts(
        id=str(inspected["Id"]), name=str(inspected.get("Name", "")).lstrip("/"),
        running=bool(state.get("Running")), pid=int(state.get("Pid") or 0),
        networks=tuple(sorted(settings.get("Networks") or {})),
        network_mode=str((inspected.get("HostConfig") or {}).get("NetworkMode") or ""),
        variables=variables)


class DockerEngine:
    """The Engine API at `base_url` (`unix:///var/run/docker.sock`)."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url
        self.timeout = timeout

    def _client(self) -> Any:
        import docker  # imported here: the SDK pulls in requests, only Docker users need it

        try:
            return docker.DockerClient(base_url=self.base_url, version="auto",
                                       timeout=int(self.timeout))
        except docker.errors.DockerException as error:
            raise DockerError(f"cannot reach Docker at {self.base_url} ({error}); is "
                                    "docker.service running? ([gpu] docker_host)") from None

    def ensure_network(self, name: str, subnet: IPv4Network, bridge: str) -> str:
        """Create the tenants' network, or check that the existing one is ours as configured.

        Returns what happened ("created" / "exists"); DockerError when a network of
        that name differs (subnet, bridge, driver, internal) and must be removed by hand.
        """
        import docker

        client = self._client()
        try:
            for attempt in range(2):
                found = [n for n in client.networks.list(names=[name]) if n.name == name]
                if found:
                    self._check_network(found[0].attrs, name, subnet, bridge)
                    return "exists"
                try:
                    client.networks.create(
                        name, driver="bridge", options={BRIDGE_NAME_OPTION: bridge},
                        ipam=docker.types.IPAMConfig(
                            pool_configs=[docker.types.IPAMPool(subnet=str(subnet))]),
                        labels={MANAGED_LABEL: "true"}, check_duplicate=True)
                    return "created"
                except docker.errors.APIError as error:
                    if attempt or getattr(error, "status_code", None) != 409:
                        raise DockerError(
                            f"cannot create Docker network {name} ({subnet}, bridge "
                            f"{bridge}): {error.explanation or error}") from None
                    # Another tenant created it a moment ago: check that one.
            raise DockerError(f"Docker network {name} could not be created")
        except docker.errors.DockerException as error:
            raise DockerError(f"Docker at {self.base_url}: {error}") from None
        finally:
            client.close()

    @staticmethod
    def _check_network(attrs: dict[str, Any], name: str, subnet: IPv4Network,
                       bridge: str) -> None:
        configs = (attrs.get("IPAM") or {}).get("Config") or []
        subnets = sorted(str(c.get("Subnet")) for c in configs if c.get("Subnet"))
        have_bridge = (attrs.get("Options") or {}).get(BRIDGE_NAME_OPTION)
        wrong = []
        if subnets != [str(subnet)]:
            wrong.append(f"subnet {', '.join(subnets) or 'none'} (gpu.docker_subnet is {subnet})")
        if have_bridge != bridge:
            wrong.append(f"bridge {have_bridge or 'br-<id>'} (must be {bridge})")
        if attrs.get("Driver") != "bridge" or attrs.get("Internal"):
            wrong.append("not a plain bridge network")
        if wrong:
            raise DockerError(
                f"Docker network {name} exists with {'; '.join(wrong)}: remove it "
                f"(docker network rm {name}) and start the tenant again; mushishi recreates it")

    def containers(self, *, label: str | None = None, ids: list[str] | None = None
                   ) -> list[ContainerFacts]:
        """Running containers with `label` (KEY=VALUE), or these `ids`, inspected."""
        import docker

        client = self._client()
        try:
            if ids is None:
                rows = client.api.containers(filters={"label": label} if label else None)
                ids = [str(row["Id"]) for row in rows]
            found = []
            for container_id in ids:
                try:
                    found.append(facts(client.api.inspect_container(container_id)))
                except docker.errors.NotFound:
                    continue
            return [c for c in found if c.running]
        except docker.errors.DockerException as error:
            raise DockerError(f"Docker at {self.base_url}: {error}") from None
        finally:
            client.close()

    def running(self) -> list[Container]:
        """Every running container, by id and name."""
        import docker

        client = self._client()
        try:
            return [Container(str(row["Id"]), str(row["Names"][0]).lstrip("/"))
                    for row in client.api.containers()]
        except docker.errors.DockerException as error:
            raise DockerError(f"Docker at {self.base_url}: {error}") from None
        finally:
            client.close()

    def stop(self, container_ids: list[str], seconds: int = 10) -> None:
        """Stop these containers (SIGTERM, then SIGKILL after `seconds`); gone ones are fine."""
        import docker

        client = self._client()
        try:
            for container_id in container_ids:
                try:
                    client.api.stop(container_id, timeout=seconds)
                except docker.errors.NotFound:
                    continue
        except docker.errors.DockerException as error:
            raise DockerError(f"Docker at {self.base_url}: {error}") from None
        finally:
            client.close()
