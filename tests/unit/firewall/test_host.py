"""Reading the live host: /proc/net sockets and $SSH_CONNECTION (fixture trees)."""

from __future__ import annotations

from pathlib import Path

from mushishi.firewall.host import established_peers, listening, sockets, ssh_connection_env

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt\n"
TCP = HEADER + (
    # 0.0.0.0:22 LISTEN; 127.0.0.1:6379 LISTEN; 192.168.1.10:22 <- 192.168.1.7:51000 ESTAB
    "   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1\n"
    "   1: 0100007F:18EB 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 2\n"
    "   2: 0A01A8C0:0016 0701A8C0:C738 01 00000000:00000000 00:00000000 00000000 0 0 3\n"
)
TCP6 = HEADER + (
    # [::]:4000 LISTEN; [::ffff:100.64.0.2]:50000 -> [::ffff:100.64.0.1]:22 ESTAB;
    # [fd7a:115c:a1e0::2]:50001 -> [fd7a:115c:a1e0::1]:22 ESTAB
    "   0: 00000000000000000000000000000000:0FA0 00000000000000000000000000000000:0000 0A "
    "00000000:00000000 00:00000000 00000000 0 0 4\n"
    "   1: 0000000000000000FFFF000001004064:0016 0000000000000000FFFF000002004064:C350 01 "
    "00000000:00000000 00:00000000 00000000 0 0 5\n"
    "   2: 5C117AFD0000E0A10000000001000000:0016 5C117AFD0000E0A10000000002000000:C351 01 "
    "00000000:00000000 00:00000000 00000000 0 0 6\n"
)
UDP = HEADER + (
    # 0.0.0.0:41641 bound; a connected UDP socket to 1.1.1.1:53
    "   0: 00000000:A2A9 00000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 7\n"
    "   1: 0A01A8C0:D431 01010101:0035 01 00000000:00000000 00:00000000 00000000 0 0 8\n"
)


def proc_tree(tmp_path: Path) -> Path:
    net = tmp_path / "net"
    net.mkdir()
    (net / "tcp").write_text(TCP)
    (net / "tcp6").write_text(TCP6)
    (net / "udp").write_text(UDP)
    return tmp_path


def test_sockets_decode_kernel_hex_for_both_families(tmp_path: Path) -> None:
    found = sockets(proc_tree(tmp_path))
    listeners = {(s.proto, s.local_address, s.local_port) for s in listening(found)}
    assert listeners == {("tcp", "0.0.0.0", 22), ("tcp", "127.0.0.1", 6379),
                         ("tcp", "::", 4000), ("udp", "0.0.0.0", 41641)}


def test_established_peers_of_the_ssh_port_include_mapped_and_native_ipv6(
        tmp_path: Path) -> None:
    found = sockets(proc_tree(tmp_path))
    assert established_peers(found, 22) == ["100.64.0.2", "192.168.1.7", "fd7a:115c:a1e0::2"]
    assert established_peers(found, 4000) == []


def write_process(root: Path, pid: int, name: str, parent: int, environ: bytes) -> None:
    directory = root / str(pid)
    directory.mkdir()
    (directory / "environ").write_bytes(environ)
    (directory / "status").write_text(f"Name:\t{name}\nState:\tS\nPPid:\t{parent}\n")


SESSION = b"HOME=/root\0SSH_CONNECTION=192.168.1.7 51000 192.168.1.10 22\0"


def test_ssh_connection_dropped_by_sudo_is_read_from_sudo_itself(tmp_path: Path) -> None:
    # 300 mushishi (sudo dropped SSH_CONNECTION) <- 200 sudo <- 100 the login shell
    write_process(tmp_path, 300, "mushishi", 200, b"PATH=/usr/bin\0")
    write_process(tmp_path, 200, "sudo", 100, SESSION)
    write_process(tmp_path, 100, "bash", 1, SESSION)
    assert ssh_connection_env(300, tmp_path) == ("192.168.1.7", 22)


def test_ancestors_that_are_not_privilege_tools_are_not_consulted(tmp_path: Path) -> None:
    # A root shell's session is not the command's: e.g. a test runner started over SSH.
    write_process(tmp_path, 300, "mushishi", 200, b"PATH=/usr/bin\0")
    write_process(tmp_path, 200, "python3", 100, SESSION)
    write_process(tmp_path, 100, "bash", 1, SESSION)
    assert ssh_connection_env(300, tmp_path) is None
