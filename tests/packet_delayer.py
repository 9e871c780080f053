"""A fixed delay for chosen packets, netem's job done with NFQUEUE (issue 20's proxy test).

    python tests/packet_delayer.py --queue 19522 --delay 0.3

netem is not in this kernel; NFQUEUE is. iptables rules send the packets to delay to the queue
(``-j NFQUEUE --queue-num 19522``); this program holds each one ``--delay`` seconds and then lets
the kernel carry on with it (``NF_ACCEPT``), in arrival order. Whatever the rules pick crosses the
path that much later: a site's TCP SYNs and ICMP echo requests delayed in the router stand for a
long path without a proxy, the handshake and the echo held back by the same delay.

It speaks nfnetlink_queue over a plain netlink socket (the messages of
``linux/netfilter/nfnetlink_queue.h``), asking for the packets' metadata only, so nothing needs
installing (no libnetfilter_queue binding). Packets queued while nothing is bound are dropped by
the kernel: a dead delayer shows as failed handshakes, not as a fast path. It prints ``ready`` once
bound. A stand-alone script (no import of the project), like tests/echo_responder.py.
"""

from __future__ import annotations

import argparse
import collections
import select
import socket
import struct
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS = 1, 2
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
NF_ACCEPT = 1


def attribute(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def message(kind: int, queue: int, attributes: bytes, flags: int, seq: int) -> bytes:
    """One nfnetlink message to the queue subsystem: netlink header, nfgenmsg, attributes."""
    body = struct.pack("!BBH", socket.AF_UNSPEC, 0, queue) + attributes
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | kind, flags, seq, 0) + body


def packet_ids(data: bytes) -> list[int]:
    """The packet ids of the NFQNL_MSG_PACKET messages in one netlink datagram."""
    out: list[int] = []
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 16:
            break
        if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            at = offset + 20  # past the netlink header and nfgenmsg
            while at + 4 <= offset + length:
                attr_length, attr_kind = struct.unpack_from("=HH", data, at)
                if attr_length < 4:
                    break
                if attr_kind & 0x3FFF == NFQA_PACKET_HDR:
                    out.append(struct.unpack_from("!I", data, at + 4)[0])
                at += (attr_length + 3) & ~3
        offset += (length + 3) & ~3
    return out


def bind(sock: socket.socket, queue: int) -> None:
    """Bind the queue and ask for metadata only; raise if the kernel refuses."""
    config = (attribute(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, 0))
              + attribute(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META)))
    sock.send(message(NFQNL_MSG_CONFIG, queue, config, NLM_F_REQUEST | NLM_F_ACK, 1))
    reply = sock.recv(65536)
    kind = struct.unpack_from("=H", reply, 4)[0]
    error = struct.unpack_from("=i", reply, 16)[0] if kind == NLMSG_ERROR else 0
    if error:
        raise OSError(-error, f"binding NFQUEUE {queue}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--delay", type=float, required=True)
    args = parser.parse_args()
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((0, 0))
    bind(sock, args.queue)
    print("ready", flush=True)
    held: collections.deque[tuple[float, int]] = collections.deque()  # (due, packet id), due ascending
    seq = 2
    while True:
        now = time.monotonic()
        while held and held[0][0] <= now:
            _, packet_id = held.popleft()
            verdict = attribute(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet_id))
            sock.send(message(NFQNL_MSG_VERDICT, args.queue, verdict, NLM_F_REQUEST, seq))
            seq += 1
        timeout = max(0.0, held[0][0] - time.monotonic()) if held else None
        if select.select([sock], [], [], timeout)[0]:
            try:
                data = sock.recv(65536)
            except OSError:  # ENOBUFS: the kernel dropped messages; their packets wait for nobody
                continue
            arrived = time.monotonic()
            held.extend((arrived + args.delay, packet_id) for packet_id in packet_ids(data))


if __name__ == "__main__":
    main()
