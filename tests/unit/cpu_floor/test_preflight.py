"""Pre-start checks against real files, a fixture /proc tree and real sockets."""

from __future__ import annotations

import socket
from pathlib import Path

from mushishi.services.cpu_floor import core, preflight
from mushishi.shared.config.cpu_floor import CpuFloorSettings

MEMINFO = """MemTotal:       24576000 kB
MemFree:          100000 kB
MemAvailable:    {available} kB
Buffers:            1000 kB
"""


def proc_root(tmp_path: Path, available_kib: int) -> Path:
    root = tmp_path / "proc"
    root.mkdir()
    (root / "meminfo").write_text(MEMINFO.format(available=available_kib))
    return root


def gguf(path: Path, size: int) -> Path:
    path.write_bytes(b"GGUF" + b"\0" * (size - 4))
    return path


def test_missing_binary_names_the_key_and_is_a_config_error(tmp_path: Path) -> None:
    refusal = preflight.check_binary(str(tmp_path / "llama-server"))
    assert refusal is not None and refusal.exit_status == core.EXIT_CONFIG
    assert refusal.message.startswith(
        f"cpu_floor.llama_server: {tmp_path}/llama-server does not exist")
    assert "PrivateTmp=yes" in refusal.message  # pytest's tmp_path is under /tmp


def test_binary_that_is_not_executable_is_refused(tmp_path: Path) -> None:
    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o644)
    refusal = preflight.check_binary(str(binary))
    assert refusal is not None and "not executable" in refusal.message
    binary.chmod(0o755)
    assert preflight.check_binary(str(binary)) is None


def test_binary_under_home_hints_at_protect_home() -> None:
    refusal = preflight.check_binary("/home/nobody-here/llama-server")
    assert refusal is not None and "ProtectHome=yes" in refusal.message


def test_missing_model_names_the_key(tmp_path: Path) -> None:
    size, refusal = preflight.check_model(str(tmp_path / "m.gguf"))
    assert refusal is not None and refusal.exit_status == core.EXIT_CONFIG
    assert refusal.message.startswith("cpu_floor.model: ") and size == 0


def test_model_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"<html>404</html>")
    _size, refusal = preflight.check_model(str(model))
    assert refusal is not None and "is not a GGUF file" in refusal.message


def test_model_size_is_reported(tmp_path: Path) -> None:
    size, refusal = preflight.check_model(str(gguf(tmp_path / "m.gguf", 4096)))
    assert refusal is None and size == 4096


def test_ram_check_reads_meminfo_under_the_given_proc_root(tmp_path: Path) -> None:
    root = proc_root(tmp_path, available_kib=2 * 1024 * 1024)  # 2 GiB available
    assert preflight.check_ram(512 * core.MIB, 1024, root) is None
    refusal = preflight.check_ram(1536 * core.MIB, 1024, root)
    assert refusal is not None and refusal.exit_status == core.EXIT_UNAVAILABLE
    assert refusal.message == (
        "not enough RAM for the CPU floor: the model needs 2.5 GiB (1.5 GiB + "
        "cpu_floor.ram_headroom_mib 1024 MiB) but only 2.0 GiB is available")


def test_ram_check_without_a_readable_meminfo_refuses(tmp_path: Path) -> None:
    refusal = preflight.check_ram(1, 0, tmp_path / "no-proc")
    assert refusal is not None and "MemAvailable" in refusal.message


def test_taken_port_is_refused_with_the_key_and_how_to_find_the_owner() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refusal = preflight.check_port("127.0.0.1", port)
    assert refusal is not None and refusal.exit_status == core.EXIT_UNAVAILABLE
    assert refusal.message.startswith(f"cpu_floor.port: 127.0.0.1:{port} is already in use")
    assert preflight.check_port("127.0.0.1", port) is None  # free again


async def test_run_checks_reads_the_real_binarys_flags_and_stops_at_the_first_refusal(
        tmp_path: Path, llama_server_binary: Path, tiny_model: Path) -> None:
    settings = CpuFloorSettings(llama_server=str(llama_server_binary), model=str(tiny_model),
                                port=1, mlock=True, ram_headroom_mib=0)
    checked = await preflight.run_checks(settings, proc_root(tmp_path, available_kib=4))
    assert checked.capabilities == core.Capabilities(("--load-mode", "mmap+mlock"), True)
    assert checked.model_size == tiny_model.stat().st_size
    assert checked.refusal is not None and "not enough RAM" in checked.refusal.message
    missing = settings.model_copy(update={"llama_server": str(tmp_path / "none")})
    checked = await preflight.run_checks(missing, tmp_path)
    assert checked.refusal is not None
    assert checked.refusal.message.startswith("cpu_floor.llama_server")


async def test_a_binary_that_is_not_llama_server_is_refused() -> None:
    _text, refusal = await preflight.read_help("/bin/true")
    assert refusal is not None and refusal.exit_status == core.EXIT_CONFIG
    assert "does not look like llama-server" in refusal.message
