"""A DNS server the test controls: A records from a JSON file, or silence, for the system resolver to ask.

Run as ``python -m tests.dns_responder ADDRESS PORT ZONE LOG`` inside a test's own network
namespace, whose ``/etc/netns/NAME/resolv.conf`` names ADDRESS. ZONE is re-read at every query:
``{"silent": false, "records": {"a.h22b.test": "127.0.0.2"}}``; while ``silent`` is true, queries
go unanswered (the resolver times out, as when a DNS server hangs). Every query is appended to LOG
as one line ``answered NAME`` / ``silent NAME`` / ``unknown NAME``, so the test can count the look-ups
that met silence without reading a clock.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
from pathlib import Path

TYPE_A, CLASS_IN = 1, 1


def question(packet: bytes) -> tuple[str, int, int, int]:
    """(name, qtype, qclass, end offset) of the first question of a query."""
    labels, offset = [], 12
    while packet[offset]:
        length = packet[offset]
        labels.append(packet[offset + 1:offset + 1 + length].decode("ascii").lower())
        offset += 1 + length
    qtype, qclass = struct.unpack("!HH", packet[offset + 1:offset + 5])
    return ".".join(labels), qtype, qclass, offset + 5


def answer(packet: bytes, address: str | None) -> bytes:
    """The reply to ``packet``: one A record (TTL 0: nothing caches it) or NXDOMAIN when ``address`` is None."""
    _, qtype, _, end = question(packet)
    ident = packet[:2]
    found = address is not None and qtype == TYPE_A
    flags = 0x8180 if address is not None else 0x8183  # response, recursion desired and available; rcode
    header = ident + struct.pack("!HHHHH", flags, 1, 1 if found else 0, 0, 0)
    body = packet[12:end]
    if found and address is not None:
        body += struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, 0, 4) + socket.inet_aton(address)
    return header + body


def serve(address: str, port: int, zone: Path, log: Path) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, port))
    while True:
        packet, peer = sock.recvfrom(4096)
        try:
            name, qtype, _, _ = question(packet)
        except (IndexError, struct.error, UnicodeDecodeError):
            continue
        state = json.loads(zone.read_text(encoding="utf-8"))
        record = state["records"].get(name)
        said = "silent" if state.get("silent") else "answered" if record else "unknown"
        with log.open("a", encoding="utf-8") as out:
            out.write(f"{said} {name} {qtype}\n")
        if said != "silent":
            sock.sendto(answer(packet, record), peer)


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
