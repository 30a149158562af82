"""What a tenant's command line runs, read from its argv (pure).

A tenant's `runtime` decides how it is confined, and the command must be one that runtime
can confine: `docker run …` / `docker compose … up` for Docker, `podman run --cgroups=split
…` for Podman, and for a plain process anything but a container engine (whose containers
the unit's IPAddressDeny= would not reach). Options of `docker run`/`podman run` are read up
to the image: value options written `--name value` or `--name=value` both count; an
unknown option is taken as a flag, so write unusual value options as `--name=value`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

ENGINES = ("docker", "podman")
COMPOSE_PROGRAMS = ("docker-compose", "podman-compose")

# Global options (before the subcommand) that take a separate value.
_GLOBAL_VALUE_OPTIONS = frozenset({
    "-c", "--config", "--context", "-H", "--host", "-l", "--log-level", "--tlscacert",
    "--tlscert", "--tlskey", "--cgroup-manager", "--connection", "--conmon",
    "--events-backend", "--hooks-dir", "--identity", "--imagestore", "--network-cmd-path",
    "--network-config-dir", "--root", "--runroot", "--runtime", "--runtime-flag", "--ssh",
    "--storage-driver", "--storage-opt", "--tmpdir", "--url", "--volumepath",
    "--cni-config-dir", "--module",
})
# Options of `run` that take no value (every other option takes one).
_RUN_FLAGS = frozenset({
    "-d", "--detach", "-i", "--interactive", "-t", "--tty", "--init", "--privileged", "-P",
    "--publish-all", "-q", "--quiet", "--read-only", "--rm", "--no-healthcheck",
    "--oom-kill-disable", "--disable-content-trust", "--sig-proxy", "--help",
    "--use-api-socket", "--replace", "--rmi", "--env-host", "--http-proxy", "--no-hosts",
    "--passwd", "--read-only-tmpfs", "--tls-verify",
})
_SHORT_FLAG_LETTERS = frozenset("ditPq")
_NETWORK_OPTIONS = ("--network", "--net")


@dataclass(frozen=True, slots=True)
class RunCommand:
    """`ENGINE [global options] [container] run [options] IMAGE [args]`, taken apart."""

    engine: str
    run_index: int  # the `run` token: options start after it
    options: tuple[tuple[str, str | None], ...]
    image_index: int | None  # None when no image follows the options

    def values(self, *names: str) -> list[str]:
        """Every value given to one of the options `names`, in order."""
        return [value for name, value in self.options if name in names and value is not None]


def program(command: list[str]) -> str:
    """The program a command runs, without its directory."""
    return PurePosixPath(command[0]).name if command else ""


def _subcommand_index(command: list[str]) -> int | None:
    """Index of the engine's first subcommand word, past its global options."""
    index = 1
    while index < len(command):
        token = command[index]
        if not token.startswith("-"):
            return index
        index += 2 if token in _GLOBAL_VALUE_OPTIONS else 1
    return None


def parse_run(command: list[str]) -> RunCommand | None:
    """The `docker run`/`podman run` in `command` (also `… container run`), else None."""
    engine = program(command)
    if engine not in ENGINES:
        return None
    index = _subcommand_index(command)
    if index is not None and command[index] == "container" and index + 1 < len(command):
        index += 1
    if index is None or command[index] != "run":
        return None
    options: list[tuple[str, str | None]] = []
    position = index + 1
    while position < len(command) and command[position].startswith("-"):
        token = command[position]
        if token == "--":  # noqa: S105 (the end of options, not a password)
            position += 1
            break
        if token.startswith("--") and "=" in token:
            name, value = token.split("=", 1)
            options.append((name, value))
        elif token in _RUN_FLAGS or (token[1:] and not token.startswith("--")
                                     and set(token[1:]) <= _SHORT_FLAG_LETTERS):
            options.append((token, None))
        else:
            value = command[position + 1] if position + 1 < len(command) else None
            options.append((token, value))
            position += 1
        position += 1
    image = position if position < len(command) else None
    return RunCommand(engine, index, tuple(options), image)


def compose_up_index(command: list[str]) -> int | None:
    """Index of `up` in `docker compose [opts] up …` or `docker-compose [opts] up …`."""
    name = program(command)
    if name in COMPOSE_PROGRAMS:
        start = 1
    elif name in ENGINES and len(command) > 1 and command[1] == "compose":
        start = 2
    else:
        return None
    return command.index("up", start) if "up" in command[start:] else None


def compose_command(command: list[str], *subcommand: str) -> list[str] | None:
    """`… compose [opts] up [args]` -> `… compose [opts] SUBCOMMAND…`; None if not compose."""
    index = compose_up_index(command)
    return None if index is None else [*command[:index], *subcommand]


def requested_networks(run: RunCommand) -> list[str]:
    """The networks a `docker run` joins: its --network values, else the default bridge."""
    return run.values(*_NETWORK_OPTIONS) or ["bridge"]


def splits_cgroups(run: RunCommand) -> bool:
    """Whether `podman run` keeps its container in the unit's cgroup (--cgroups=split)."""
    return "split" in run.values("--cgroups")


def runtime_problem(runtime: str, command: list[str]) -> str | None:
    """Why `command` cannot run confined under `runtime`, or None when it can."""
    name = program(command)
    if runtime == "process":
        engine = next((e for e in ENGINES if name.startswith(e)), None)
        if engine is not None:
            return (f"the command runs {name}, whose containers this unit's IPAddressDeny= "
                    f"does not reach: set runtime = \"{engine}\"")
        return None
    if runtime == "docker":
        run = parse_run(command)
        if compose_up_index(command) is not None and name in ("docker", "docker-compose"):
            return None
        if run is None or run.engine != "docker":
            return ("a docker tenant's command must be `docker run …` or `docker compose … up` "
                    f"(got {' '.join(command[:3])} …)")
        if run.image_index is None:
            return "`docker run` names no image"
        return None
    run = parse_run(command)
    if run is None or run.engine != "podman":
        return f"a podman tenant's command must be `podman run …` (got {' '.join(command[:3])} …)"
    if not splits_cgroups(run):
        return ("`podman run` without --cgroups=split puts the container outside this unit's "
                "cgroup, where IPAddressDeny= does not confine it: add --cgroups=split")
    if run.image_index is None:
        return "`podman run` names no image"
    return None
