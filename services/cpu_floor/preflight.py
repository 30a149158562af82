"""Pre-start checks: the binary and the model exist, RAM covers the model, the port is free.

Each check returns a one-line `Refusal` naming the config key to fix, or None. The /proc
root is a parameter so tests can hand in a fixture tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import resource
import socket
from dataclasses import dataclass
from pathlib import Path

from mushishi.services.cpu_floor.core import (
    EXIT_CONFIG,
    EXIT_UNAVAILABLE,
    MODERN,
    Capabilities,
    Refusal,
    capability_warnings,
    hidden_path_hint,
    memlock_warning,
    parse_capabilities,
    parse_meminfo,
    ram_refusal,
)
from mushishi.shared.config.cpu_floor import CpuFloorSettings
from mushishi.shared.config.router import connect_host
from mushishi.shared.formatting import human_bytes

GGUF_MAGIC = b"GGUF"


def check_binary(path: str) -> Refusal | None:
    """cpu_floor.llama_server must be an executable file."""
    target = Path(path)
    if not target.exists():
        return Refusal(f"cpu_floor.llama_server: {path} does not exist"
                       f"{hidden_path_hint(path)}", EXIT_CONFIG)
    if not target.is_file():
        return Refusal(f"cpu_floor.llama_server: {path} is not a file", EXIT_CONFIG)
    if not os.access(target, os.X_OK):
        return Refusal(f"cpu_floor.llama_server: {path} is not executable by this user "
                       f"(uid {os.getuid()})", EXIT_CONFIG)
    return None


async def read_help(binary: str, within_s: float = 10.0) -> tuple[str, Refusal | None]:
    """`llama-server --help`: proves the binary runs and says which flags it has."""
    try:
        process = await asyncio.create_subprocess_exec(
            binary, "--help", stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    except OSError as error:
        return "", Refusal(f"cpu_floor.llama_server: cannot run {binary}: "
                           f"{error.strerror or error}", EXIT_CONFIG)
    try:
        async with asyncio.timeout(within_s):
            output, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        return "", Refusal(f"cpu_floor.llama_server: `{binary} --help` did not finish within "
                           f"{within_s:g} s", EXIT_CONFIG)
    text = output.decode("utf-8", "replace")
    if "--port" not in text or "--model" not in text:
        last = text.strip().splitlines()[-1] if text.strip() else "no output"
        return text, Refusal(f"cpu_floor.llama_server: {binary} does not look like "
                             f"llama-server (`--help` exited {process.returncode}: {last})",
                             EXIT_CONFIG)
    return text, None


def check_model(path: str) -> tuple[int, Refusal | None]:
    """cpu_floor.model must be a readable GGUF file; returns its size in bytes too."""
    target = Path(path)
    if not target.exists():
        return 0, Refusal(f"cpu_floor.model: {path} does not exist{hidden_path_hint(path)}",
                          EXIT_CONFIG)
    if not target.is_file():
        return 0, Refusal(f"cpu_floor.model: {path} is not a file", EXIT_CONFIG)
    try:
        with target.open("rb") as handle:
            magic = handle.read(4)
        size = target.stat().st_size
    except OSError as error:
        return 0, Refusal(f"cpu_floor.model: cannot read {path}: {error.strerror} "
                          f"(the floor runs as uid {os.getuid()})", EXIT_CONFIG)
    if magic != GGUF_MAGIC:
        return size, Refusal(f"cpu_floor.model: {path} is not a GGUF file "
                             f"(it starts with {magic!r}, not b'GGUF')", EXIT_CONFIG)
    return size, None


def read_meminfo(proc_root: Path) -> dict[str, int]:
    """`<proc_root>/meminfo`, parsed; empty when unreadable."""
    try:
        return parse_meminfo((proc_root / "meminfo").read_text(encoding="ascii"))
    except OSError:
        return {}


def check_ram(model_bytes: int, headroom_mib: int, proc_root: Path) -> Refusal | None:
    """MemAvailable (from `<proc_root>/meminfo`) must cover the model plus the headroom."""
    return ram_refusal(model_bytes, read_meminfo(proc_root), headroom_mib)


def check_port(host: str, port: int) -> Refusal | None:
    """llama-server's address must be free (it exits with a vague error otherwise)."""
    address = connect_host(host)
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with contextlib.closing(socket.socket(family, socket.SOCK_STREAM)) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host or address, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return Refusal(
                    f"cpu_floor.port: {host}:{port} is already in use by another process "
                    f"(`ss -ltnp 'sport = :{port}'` shows which)", EXIT_UNAVAILABLE)
            return Refusal(f"cpu_floor.host: cannot listen on {host}:{port}: "
                           f"{error.strerror}", EXIT_CONFIG)
    return None


def memlock_limit() -> int | None:
    """This process's soft RLIMIT_MEMLOCK in bytes; None when unlimited."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return None if soft == resource.RLIM_INFINITY else soft


@dataclass(frozen=True)
class Checked:
    """The outcome of the pre-start checks."""

    refusal: Refusal | None
    model_size: int = 0
    capabilities: Capabilities = MODERN
    warnings: tuple[str, ...] = ()


async def run_checks(settings: CpuFloorSettings, proc_root: Path) -> Checked:
    """All pre-start checks in order, stopping at the first refusal."""
    refusal = check_binary(settings.llama_server)
    if refusal is not None:
        return Checked(refusal)
    help_text, refusal = await read_help(settings.llama_server)
    if refusal is not None:
        return Checked(refusal)
    capabilities = parse_capabilities(help_text)
    size, refusal = check_model(settings.model)
    if refusal is not None:
        return Checked(refusal, size, capabilities)
    refusal = check_ram(size, settings.ram_headroom_mib, proc_root) or check_port(
        settings.host, settings.port)
    warnings = capability_warnings(settings, capabilities)
    locking = settings.mlock and capabilities.mlock_args is not None
    warning = memlock_warning(size, locking, memlock_limit())
    return Checked(refusal, size, capabilities,
                   tuple(warnings + ([warning] if warning else [])))


def describe_model(path: str, size: int) -> str:
    """'/m/model.gguf (20.3 GiB)'."""
    return f"{path} ({human_bytes(size)})"
