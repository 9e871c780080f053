"""A test host's echo responder that answers each echo request after a fixed delay.

Run inside a site namespace whose kernel echo is switched off
(``net.ipv4.icmp_echo_ignore_all=1``): a raw socket still receives the requests, and each is
answered ``--delay`` seconds later with the same identifier, sequence and payload. This stands
in for a long or slow link (netem is not available here), with a delay the test knows exactly.
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import threading


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--delay", type=float, required=True)
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    print("ready", flush=True)
    while True:
        packet, (source, _) = sock.recvfrom(65535)
        icmp = packet[(packet[0] & 0x0F) * 4:]
        if len(icmp) < 8 or icmp[0] != 8:
            continue
        reply = bytearray(b"\0\0\0\0" + icmp[4:])
        struct.pack_into("!H", reply, 2, checksum(bytes(reply)))
        threading.Timer(args.delay, sock.sendto, (bytes(reply), (source, 0))).start()


if __name__ == "__main__":
    sys.exit(main())
