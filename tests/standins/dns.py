"""A recording DNS server speaking RFC 1035 over UDP and TCP: a local resolver on a box
(dnsmasq, unbound) and the upstream that systemd-resolved forwards to, in one.

Every query is recorded (the name, type, transport and peer) as a JSON line in `--record`
before it is answered; names given with `--answer NAME=IPV4` get that A record
(`*.SUFFIX=IPV4`: every name under SUFFIX), every other name NXDOMAIN (AAAA for an answered
name: no data). The record is what tells a test whether a lookup left a confined unit: a
name in it was asked for, whatever the caller saw.

Run alone: `python -m tests.standins.dns --listen 127.0.0.1:53 --record queries.jsonl`.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import signal
import struct
from pathlib import Path

TYPE_A, TYPE_AAAA = 1, 28
RCODE_NXDOMAIN = 3


def parse_question(message: bytes) -> tuple[int, int, str, int, int]:
    """(id, flags, name, type, end of the question) of a query; ValueError if malformed."""
    if len(message) < 12:
        raise ValueError("shorter than a DNS header")
    ident, flags, questions = struct.unpack(">HHH", message[:6])
    if questions != 1:
        raise ValueError(f"{questions} questions")
    labels, offset = [], 12
    while True:
        if offset >= len(message):
            raise ValueError("name runs past the message")
        length = message[offset]
        offset += 1
        if length == 0:
            break
        if length > 63:
            raise ValueError("compressed or oversized label in a question")
        labels.append(message[offset:offset + length].decode("ascii", "replace"))
        offset += length
    if offset + 4 > len(message):
        raise ValueError("question without type and class")
    qtype = struct.unpack(">H", message[offset:offset + 2])[0]
    return ident, flags, ".".join(labels).lower(), qtype, offset + 4


def answer(message: bytes, answers: dict[str, str]) -> tuple[bytes, str, int]:
    """The response to one query, the name asked for and its type."""
    ident, flags, name, qtype, end = parse_question(message)
    question = message[12:end]
    address = answers.get(name) or next(
        (value for key, value in answers.items()
         if key.startswith("*.") and name.endswith(key[1:])), None)
    records = b""
    rcode = 0 if address is not None else RCODE_NXDOMAIN
    if address is not None and qtype == TYPE_A:
        records = struct.pack(">HHHIH", 0xC00C, TYPE_A, 1, 0, 4) + \
            ipaddress.IPv4Address(address).packed
    count = 1 if records else 0
    reply_flags = 0x8000 | (flags & 0x0100) | 0x0080 | rcode  # QR, RD copied, RA
    header = struct.pack(">HHHHHH", ident, reply_flags, 1, count, 0, 0)
    return header + question + records, name, qtype


class Recorder:
    """Answers queries and appends each to the record file."""

    def __init__(self, record: Path, answers: dict[str, str]) -> None:
        self.record = record
        self.answers = answers

    def handle(self, message: bytes, transport: str, peer: object) -> bytes | None:
        try:
            reply, name, qtype = answer(message, self.answers)
        except ValueError:
            return None
        with self.record.open("a") as handle:
            handle.write(json.dumps({"name": name, "type": qtype, "transport": transport,
                                     "peer": str(peer)}) + "\n")
        return reply


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.recorder.handle(data, "udp", addr[0])
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


async def _tcp(recorder: Recorder, reader: asyncio.StreamReader,
               writer: asyncio.StreamWriter) -> None:
    peer = writer.get_extra_info("peername")
    try:
        while True:
            size = struct.unpack(">H", await reader.readexactly(2))[0]
            reply = recorder.handle(await reader.readexactly(size), "tcp", peer[0])
            if reply is None:
                break
            writer.write(struct.pack(">H", len(reply)) + reply)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(listen: list[tuple[str, int]], recorder: Recorder) -> None:
    """Serve on every address until SIGTERM; print `listening …` once all are bound."""
    loop = asyncio.get_running_loop()
    servers = []
    for host, port in listen:
        await loop.create_datagram_endpoint(lambda: _Udp(recorder), local_addr=(host, port))
        servers.append(await asyncio.start_server(
            lambda r, w: _tcp(recorder, r, w), host, port))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("listening " + " ".join(f"{h}:{p}" for h, p in listen), flush=True)
    await stop.wait()
    for server in servers:
        server.close()


def main() -> None:
    """CLI: serve until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m tests.standins.dns")
    parser.add_argument("--listen", action="append", required=True, help="HOST:PORT")
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--answer", action="append", default=[],
                        help="NAME=IPV4 or *.SUFFIX=IPV4")
    args = parser.parse_args()
    listen = [(a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1])) for a in args.listen]
    answers = dict(item.lower().split("=", 1) for item in args.answer)
    asyncio.run(serve(listen, Recorder(args.record, answers)))


if __name__ == "__main__":
    main()
