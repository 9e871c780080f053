"""The ICMP engine: one socket per address family, paced echoes, replies matched by sequence.

Why it is built this way (figures in ``shared/notes/icmp-facts.md``, measured on this kind of
machine): icmplib's ``async_multiping`` costs ~880 µs of CPU per echo on raw sockets because every
raw socket sees every reply; a Python timestamp taken when the event loop wakes up inflates a
5 µs loopback RTT to ~1.7 ms at scale; and a burst of replies overflows the default receive
buffer silently. So this engine

* opens sockets through icmplib (raw when allowed, else unprivileged datagram ICMP) and takes
  the packet template from icmplib's packet builder, then sends prepared bytes with ``sendto``
  (only the sequence number changes per echo; the checksum is adjusted arithmetically);
* registers each socket once with the event loop and drains it with ``recvmsg`` until it would
  block, taking the receive time from the kernel (``SO_TIMESTAMPNS``) and the send time from the
  kernel too (``SO_TIMESTAMPING`` with ``TX_SCHED``, read from the error queue): a clock read in
  Python right before ``sendto`` is late by however long the process was preempted, or waited
  for the GIL, between the read and the send (7–11 ms seen on a loaded 2-core machine, where
  the kernel's own send-to-reply time was 0.02 ms). The Python clock, bracketing the send, stays
  as the fallback and as the check that a kernel stamp belongs to the echo it is matched to;
* raises the receive buffer (``SO_RCVBUFFORCE`` as root) and reads the kernel's drop counter
  (``SO_RXQ_OVFL``) so that an overflow shows in ``connmon_icmp_receive_buffer_drops_total``
  instead of passing silently for network loss;
* matches a reply on (source address, sequence) *and* an 8-byte random cookie in the payload,
  so another pinger on the host using the same identifier cannot corrupt a result;
* spreads each round of echoes over part of the spacing instead of bursting them.

It knows nothing of targets, config or metrics: callers give addresses and timing, and get
back per-echo RTTs. Resolving names is :mod:`monitor.probes.resolver`'s job.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import socket
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from icmplib import ICMPv4Socket, ICMPv6Socket
from icmplib.exceptions import ICMPSocketError, SocketPermissionError

from monitor.errors import IcmpPermissionError, ProbeErrorReason
from monitor.icmp.batch_receive import ErrorQueueBatch, open_batch

log = logging.getLogger(__name__)

# Linux socket option numbers that the socket module does not always export.
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_SOL_RAW = 255
_ICMP_FILTER = 1
_ICMP6_FILTER = 1
_ECHO_REPLY: dict[int, int] = {socket.AF_INET: 0, socket.AF_INET6: 129}
_ECHO_REQUEST: dict[int, int] = {socket.AF_INET: 8, socket.AF_INET6: 128}
_UNREACHABLE: dict[int, int] = {socket.AF_INET: 3, socket.AF_INET6: 1}  # destination unreachable
_TIME_EXCEEDED: dict[int, int] = {socket.AF_INET: 11, socket.AF_INET6: 3}  # a hop's answer to a trace's probe
_ICMP_ERRORS: dict[int, tuple[int, int]] = {f: (_UNREACHABLE[f], _TIME_EXCEEDED[f]) for f in _UNREACHABLE}
# the ancillary level and type that set one datagram's TTL (hop limit) in sendmsg: a trace's probes only
_TTL_CMSG: dict[int, tuple[int, int]] = {socket.AF_INET: (socket.IPPROTO_IP, socket.IP_TTL),
                                         socket.AF_INET6: (socket.IPPROTO_IPV6, getattr(socket, "IPV6_HOPLIMIT", 52))}
_IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
_IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
_MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)
_SO_TIMESTAMPING = getattr(socket, "SO_TIMESTAMPING", 37)
# SOF_TIMESTAMPING_* (linux/net_tstamp.h): a software stamp when the packet enters the device
# layer (before any qdisc, as a user-space clock before sendto would be), reported alone with a
# per-socket counter that names the send it belongs to; RX_FILTER keeps these stamps off replies.
_TX_SCHED, _TS_SOFTWARE, _TS_OPT_ID, _TS_OPT_TSONLY, _TS_OPT_RX_FILTER = 1 << 8, 1 << 4, 1 << 7, 1 << 11, 1 << 17
_TX_STAMP_FLAGS = _TX_SCHED | _TS_SOFTWARE | _TS_OPT_ID | _TS_OPT_TSONLY
_SO_EE_ORIGIN_TIMESTAMPING = 4
_UNREACHABLE_CODES: dict[int, dict[int, str]] = {
    socket.AF_INET: {0: "network unreachable", 1: "host unreachable", 2: "protocol unreachable",
                     3: "port unreachable", 9: "network prohibited", 10: "host prohibited",
                     13: "administratively prohibited"},
    socket.AF_INET6: {0: "no route to destination", 1: "administratively prohibited",
                      3: "address unreachable", 4: "port unreachable"},
}

RECEIVE_BUFFER_BYTES = 16 * 1024 * 1024
# Sends behind their schedule go out back to back; every _YIELD_CHECK_SENDS sends the loop is let
# in (the reader drains, scrapes are served) once _YIELD_AFTER_SECONDS have passed since it last ran.
# A fixed 256 sends took 30–75 ms under load, the longest steps left in a cycle (issue 9).
_YIELD_CHECK_SENDS = 16
_YIELD_AFTER_SECONDS = 0.004
_MAX_ROUND_SPREAD_SECONDS = 0.001  # gap between two endpoints' echoes within a round, at most
# Echoes due within this much of now go out together: one event-loop wake-up per millisecond
# instead of one per echo, while a site's echoes stay within 1 ms of their `spacing`.
_SLEEP_GRANULARITY_SECONDS = 0.001
_SEND_ATTEMPTS = 4  # tries of one sendto that would block before the echo is given up
_MAX_ERRORS_PER_DRAIN = 64  # queued socket errors read in one go before yielding to the loop

_SEND_ERRORS = {
    errno.ENETUNREACH: ProbeErrorReason.NO_ROUTE,
    errno.EHOSTUNREACH: ProbeErrorReason.NO_ROUTE,
    errno.EPERM: ProbeErrorReason.PERMISSION,
    errno.EACCES: ProbeErrorReason.PERMISSION,
    errno.EAFNOSUPPORT: ProbeErrorReason.UNSUPPORTED_FAMILY,
}


@dataclass(frozen=True, slots=True)
class EchoJob:
    """Echoes to send to one address in one call of :meth:`IcmpEngine.ping`."""

    address: str  # canonical IP literal (see monitor.config.hosts.normalize_ip)
    count: int
    spacing_seconds: float
    timeout_seconds: float
    payload_bytes: int = 56


@dataclass(slots=True)
class EchoOutcome:
    """What happened to one job's echoes: RTT per echo in send order (None = no reply in time)."""

    sent: int = 0
    rtts_seconds: list[float | None] = field(default_factory=list)
    error: ProbeErrorReason | None = None
    error_detail: str = ""
    unreachable: int = 0  # echoes answered by an ICMP "destination unreachable" instead of a reply
    unreachable_detail: str = ""  # e.g. "host unreachable from 10.77.1.1"


@dataclass(frozen=True, slots=True)
class HopAnswer:
    """What answered one TTL-limited echo of :meth:`IcmpEngine.echo_hops` (issue 21, traces).

    ``address`` is the hop that sent Time Exceeded (or Destination Unreachable), or the destination
    itself when its echo reply came (``reached``); None when nothing answered in time.
    """

    ttl: int
    address: str | None
    rtt_seconds: float | None
    reached: bool = False
    unreachable: bool = False  # the hop answered "destination unreachable": the path ends there


@dataclass(slots=True)
class EngineStats:
    """Counters over the engine's life, for the monitor's own health metrics."""

    echoes_sent: int = 0
    replies_matched: int = 0
    replies_late: int = 0  # matched, but after the echo's timeout: counted as lost
    replies_unmatched: int = 0  # duplicates, other pingers' replies, replies after the cycle
    receive_buffer_drops: int = 0  # kernel-side drops on our sockets (SO_RXQ_OVFL)
    send_errors: int = 0
    destination_unreachable: int = 0  # echoes answered by an ICMP destination-unreachable message
    kernel_send_stamps: int = 0  # echoes whose send time is the kernel's (the rest: Python clock)


class _Cycle:
    """Book-keeping of one ``ping`` call: how many echoes still wait, and who to wake."""

    __slots__ = ("outstanding", "sending", "done")

    def __init__(self) -> None:
        self.outstanding = 0
        self.sending = True
        self.done = asyncio.Event()


_InFlight = tuple[_Cycle, EchoOutcome, int, int, int]


class _FamilySocket:
    """One ICMP socket (raw or datagram) of one address family, prepared for fast use."""

    def __init__(self, family: int, privileged: bool) -> None:
        factory = ICMPv4Socket if family == socket.AF_INET else ICMPv6Socket
        self.icmplib_socket = factory(privileged=privileged)  # raises SocketPermissionError
        try:
            self._prepare(family, privileged)
        except OSError:
            self.icmplib_socket.close()
            raise

    def _prepare(self, family: int, privileged: bool) -> None:
        self.family = family
        self.privileged = privileged
        self.sock: socket.socket = self.icmplib_socket.sock
        self.sock.setblocking(False)
        self.strip_ip_header = family == socket.AF_INET and privileged  # raw IPv4 sees the IP header
        self.receive_buffer_bytes = self._raise_receive_buffer()
        self.sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        self.counts_drops = _try_setsockopt(self.sock, socket.SOL_SOCKET, _SO_RXQ_OVFL, 1)
        if privileged:
            self._filter_echo_replies()
        else:  # a datagram socket sees ICMP errors only through its error queue
            level, option = ((socket.IPPROTO_IP, _IP_RECVERR) if family == socket.AF_INET
                             else (socket.IPPROTO_IPV6, _IPV6_RECVERR))
            self.sock.setsockopt(level, option, 1)
        self.templates: dict[int, tuple[bytearray, int]] = {}
        self.tx_stamps = self._enable_send_stamps()
        # recvmmsg where libc has it: the error queue holds a stamp per echo (or ICMP errors)
        self.error_batch = open_batch(self.sock) if self.tx_stamps or not privileged else None
        # (clock before sendto, clock after sendto, pending key) per echo sent, in send order, until
        # its kernel stamp is read. Sends are sequential, so these brackets are disjoint and ordered:
        # a stamp belongs to the send whose bracket holds it. That needs no trust in the kernel's
        # OPT_ID counter, which a send that fails after being counted (an iptables OUTPUT DROP)
        # would put out of step.
        self.tx_sent: collections.deque[tuple[int, int, tuple[str, int]]] = collections.deque()

    def _enable_send_stamps(self) -> bool:
        """Ask for kernel send timestamps; False on a kernel without them (Python clock then)."""
        for flags in (_TX_STAMP_FLAGS | _TS_OPT_RX_FILTER, _TX_STAMP_FLAGS):
            if _try_setsockopt(self.sock, socket.SOL_SOCKET, _SO_TIMESTAMPING, flags):
                return True
        log.info("kernel send timestamps unavailable; ICMP send times come from the Python clock")
        return False

    def _raise_receive_buffer(self) -> int:
        if not _try_setsockopt(self.sock, socket.SOL_SOCKET, _SO_RCVBUFFORCE, RECEIVE_BUFFER_BYTES):
            _try_setsockopt(self.sock, socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        size: int = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        return size

    def _filter_echo_replies(self) -> None:
        """Ask the kernel to pass this raw socket only echo replies, destination-unreachable and
        time-exceeded messages (not our own requests, nor the host's other ICMP traffic); the last
        answer only a trace's probes (issue 21), so a host without traces sees none of them."""
        wanted = (_ECHO_REPLY[self.family], *_ICMP_ERRORS[self.family])
        if self.family == socket.AF_INET:
            blocked = 0xFFFFFFFF
            for kind in wanted:
                blocked &= ~(1 << kind)
            _try_setsockopt(self.sock, _SOL_RAW, _ICMP_FILTER, struct.pack("I", blocked))
        else:
            words = [0xFFFFFFFF] * 8
            for kind in wanted:
                words[kind >> 5] &= ~(1 << (kind & 31))
            _try_setsockopt(self.sock, socket.IPPROTO_ICMPV6, _ICMP6_FILTER, struct.pack("8I", *words))

    def template(self, identifier: int, cookie: bytes, payload_bytes: int) -> tuple[bytearray, int]:
        """Return an echo request for this payload size and the ones'-complement sum of it at seq 0.

        The packet comes from icmplib's builder once; afterwards only the sequence field and the
        checksum change, and the checksum is derived from this sum (RFC 1624 style) per echo.
        """
        cached = self.templates.get(payload_bytes)
        if cached is None:
            payload = (cookie * (payload_bytes // len(cookie) + 1))[:payload_bytes]
            packet = bytearray(self.icmplib_socket._create_packet(identifier, 0, payload))
            checksum = struct.unpack_from("!H", packet, 2)[0]
            cached = (packet, ~checksum & 0xFFFF)
            self.templates[payload_bytes] = cached
        return cached

    def close(self) -> None:
        self.icmplib_socket.close()


# (socket or None for an unsupported family, template, its sum at sequence 0, destination, timeout ns, timeout s)
_PreparedJob = tuple[_FamilySocket | None, bytearray, int, tuple[str, int], int, float]


def _try_setsockopt(sock: socket.socket, level: int, option: int, value: int | bytes) -> bool:
    try:
        sock.setsockopt(level, option, value)
    except OSError:
        return False
    return True


def checksum_for_sequence(base_sum: int, sequence: int) -> int:
    """Internet checksum of a template packet once ``sequence`` is written into it.

    ``base_sum`` is the folded ones'-complement sum of the packet with sequence 0; adding a
    16-bit word to a ones'-complement sum is one add and one fold.
    """
    total = base_sum + sequence
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class IcmpEngine:
    """Sends echoes for many addresses at once over shared sockets and collects kernel-timed RTTs."""

    def __init__(self, sockets: Sequence[_FamilySocket]) -> None:
        self._sockets = {s.family: s for s in sockets}
        self.identifier = int.from_bytes(os.urandom(2), "big")
        self.cookie = os.urandom(8)
        self.stats = EngineStats()
        # (source address, sequence) → (cycle, outcome, echo index, send time ns, timeout ns)
        self._pending: dict[tuple[str, int], _InFlight] = {}
        self._next_sequence: dict[str, int] = {}
        self._drops_seen: dict[int, int] = {}
        # a trace's probes in flight (keys of _pending too) → the hop that answered, once one did
        self._hops: dict[tuple[str, int], str | None] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, mode: str = "auto") -> IcmpEngine:
        """Open sockets for IPv4 and (where the kernel has it) IPv6.

        Args:
            mode: ``raw``, ``unprivileged`` or ``auto`` (raw when the process may, else datagram).

        Raises:
            IcmpPermissionError: neither kind of socket may be opened; the message names the fixes.
        """
        attempts = {"auto": (True, False), "raw": (True,), "unprivileged": (False,)}[mode]
        last_error: Exception | None = None
        for privileged in attempts:
            try:
                v4 = _FamilySocket(socket.AF_INET, privileged)
            except (SocketPermissionError, ICMPSocketError, OSError) as err:
                last_error = err
                continue
            sockets = [v4]
            try:
                sockets.append(_FamilySocket(socket.AF_INET6, privileged))
            except (SocketPermissionError, ICMPSocketError, OSError) as err:
                log.warning("IPv6 ICMP is not available (%s); IPv6 endpoints will report "
                            "'unsupported_family'", err)
            return cls(sockets)
        raise IcmpPermissionError(_permission_message(mode, last_error))

    @property
    def privileged(self) -> bool:
        return self._sockets[socket.AF_INET].privileged

    @property
    def families(self) -> frozenset[int]:
        return frozenset(self._sockets)

    def describe(self) -> str:
        kind = "raw" if self.privileged else "unprivileged datagram"
        fams = "+".join("IPv4" if f == socket.AF_INET else "IPv6" for f in sorted(self._sockets))
        buffers = ", ".join(f"{s.receive_buffer_bytes // 1024} KiB" for s in self._sockets.values())
        return f"{kind} ICMP sockets ({fams}), receive buffer {buffers}"

    def close(self) -> None:
        for fs in self._sockets.values():
            if self._loop is not None:
                self._loop.remove_reader(fs.sock.fileno())
            fs.close()
        self._sockets.clear()
        self._loop = None

    def _ensure_readers(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        if self._loop is not None:
            for fs in self._sockets.values():
                self._loop.remove_reader(fs.sock.fileno())
        for fs in self._sockets.values():
            loop.add_reader(fs.sock.fileno(), self._drain, fs)
        self._loop = loop

    # ------------------------------------------------------------------ pinging
    async def ping(self, jobs: Sequence[EchoJob]) -> list[EchoOutcome]:
        """Send every job's echoes, paced, and wait for replies; one outcome per job, in order.

        Round k of echoes goes out at ``k × spacing``; within a round the jobs are spread by at
        most 1 ms each and over at most half the spacing, so a large batch is not one burst.
        """
        self._ensure_readers()
        outcomes = [EchoOutcome(rtts_seconds=[None] * job.count) for job in jobs]
        if not jobs:
            return outcomes
        cycle = _Cycle()
        keys: list[tuple[str, int]] = []
        try:
            deadline = await self._send_all(jobs, outcomes, cycle, keys)
            cycle.sending = False
            if cycle.outstanding:
                with contextlib.suppress(TimeoutError):  # the deadline passing ends a lossy cycle
                    await asyncio.wait_for(cycle.done.wait(), max(0.0, deadline - time.monotonic()))
                # A starved loop may wake after the deadline with replies still queued; their kernel
                # timestamps say whether they came in time, so read them before giving echoes up.
                for fs in self._sockets.values():
                    self._drain(fs)
        finally:  # also when cancelled: unanswered echoes must not stay in the pending map
            pending = self._pending
            for key in keys:
                entry = pending.get(key)
                if entry is not None and entry[0] is cycle:
                    del pending[key]
            if not pending:  # no echo waits for a send stamp any more
                for fs in self._sockets.values():
                    fs.tx_sent.clear()
        for outcome in outcomes:
            if outcome.sent and outcome.error is not None and outcome.error != ProbeErrorReason.UNSUPPORTED_FAMILY:
                # Some echoes went out: the ones that could not be sent count as lost (loss is taken
                # over every echo attempted), and the endpoint was probed, so it has no error reason.
                outcome.error, outcome.error_detail = None, ""
            if outcome.unreachable and outcome.error is None and all(r is None for r in outcome.rtts_seconds):
                outcome.error = ProbeErrorReason.UNREACHABLE
                outcome.error_detail = outcome.unreachable_detail
        return outcomes

    async def echo_hops(self, address: str, ttls: Sequence[int], timeout_seconds: float,
                        spacing_seconds: float = 0.002, payload_bytes: int = 56) -> list[HopAnswer]:
        """Send one echo per entry of ``ttls``, each with that TTL (hop limit), and say what answered each.

        The probes of a trace (issue 21, :mod:`monitor.icmp.trace`): the same sockets, identifier,
        cookie and sequence space as :meth:`ping`, so a trace runs beside the cycles without a socket
        of its own; only the TTL differs, set per datagram (``IP_TTL`` ancillary data), never on the
        socket that the cycles share. A hop answers with Time Exceeded (a raw socket reads it, a
        datagram socket finds it on its error queue), the destination with its echo reply. The
        probes go out ``spacing_seconds`` apart and are waited for together, ``timeout_seconds``
        after the last one left.

        Returns:
            One answer per entry of ``ttls``, in order.
        """
        self._ensure_readers()
        fs = self._sockets.get(_family_of(address))
        answers = [EchoOutcome(rtts_seconds=[None]) for _ in ttls]
        if fs is None or not ttls:
            return [HopAnswer(ttl, None, None) for ttl in ttls]
        template, base_sum = fs.template(self.identifier, self.cookie, payload_bytes)
        level, option = _TTL_CMSG[fs.family]
        timeout_ns = int(timeout_seconds * 1e9)
        cycle = _Cycle()
        keys: list[tuple[str, int] | None] = []
        try:
            for n, ttl in enumerate(ttls):
                if n and spacing_seconds > 0:
                    await asyncio.sleep(spacing_seconds)
                sequence = self._next_sequence.get(address, 0)
                self._next_sequence[address] = (sequence + 1) & 0xFFFF
                key = (address, sequence)
                if key in self._pending:
                    keys.append(None)
                    continue
                packet = bytearray(template)  # a copy: the cycles patch the shared template
                struct.pack_into("!HHH", packet, 2, checksum_for_sequence(base_sum, sequence), self.identifier,
                                 sequence)
                ancillary = [(level, option, struct.pack("i", ttl))]
                failed: OSError | None = None
                for _attempt in range(2):  # a pending error of an earlier datagram is reported once: retry once
                    sent_ns = time.time_ns()
                    try:
                        fs.sock.sendmsg([packet], ancillary, 0, (address, 0))
                    except OSError as err:
                        failed = err
                        continue
                    failed = None
                    break
                if failed is not None:
                    answers[n].error = _SEND_ERRORS.get(failed.errno or 0, ProbeErrorReason.SEND_FAILED)
                    keys.append(None)
                    continue
                after_ns = time.time_ns()
                self._pending[key] = (cycle, answers[n], 0, sent_ns, timeout_ns)
                self._hops[key] = None
                if fs.tx_stamps:
                    fs.tx_sent.append((sent_ns, after_ns, key))
                keys.append(key)
                cycle.outstanding += 1
                answers[n].sent = 1
            cycle.sending = False
            if cycle.outstanding:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(cycle.done.wait(), timeout_seconds)
                self._drain(fs)
        finally:  # also when cancelled: nothing of the trace stays in the engine's maps
            offenders: list[str | None] = []
            for sent in keys:
                offenders.append(None if sent is None else self._hops.pop(sent, None))
                if sent is not None:
                    entry = self._pending.get(sent)
                    if entry is not None and entry[0] is cycle:
                        del self._pending[sent]
            if not self._pending:
                fs.tx_sent.clear()
        out = []
        for ttl, outcome, offender in zip(ttls, answers, offenders, strict=True):
            rtt = outcome.rtts_seconds[0]
            if outcome.unreachable:
                out.append(HopAnswer(ttl, offender, rtt, unreachable=True))
            elif offender is not None:
                out.append(HopAnswer(ttl, offender, rtt))
            elif rtt is not None:  # the destination's own echo reply
                out.append(HopAnswer(ttl, address, rtt, reached=True))
            else:
                out.append(HopAnswer(ttl, None, None))
        return out

    async def _send_all(self, jobs: Sequence[EchoJob], outcomes: list[EchoOutcome], cycle: _Cycle,
                        keys: list[tuple[str, int]]) -> float:
        """Send every echo on its schedule; return the monotonic time by which all replies are due."""
        start = time.monotonic()
        deadline = start
        pending = self._pending
        stats = self.stats
        clock_ns = time.time_ns
        monotonic = time.monotonic
        pack_into = struct.pack_into
        identifier = self.identifier
        next_sequence = self._next_sequence
        # What a job's every echo needs, made at its first echo (not for all jobs up front: that
        # would be one more long step at 10,000 sites): socket, template, sum, destination, timeout.
        prepared: list[_PreparedJob | None] = [None] * len(jobs)
        yielded = -1.0  # the first send lets the loop in once: the schedule took a while to build
        for n, (offset, job_index, echo_index) in enumerate(self._schedule(jobs)):
            now = monotonic()
            wait = offset - (now - start)
            if wait > _SLEEP_GRANULARITY_SECONDS:  # far enough ahead to be worth a wake-up of its own
                await asyncio.sleep(wait)
                yielded = monotonic()
            elif n % _YIELD_CHECK_SENDS == 0 and now - yielded > _YIELD_AFTER_SECONDS:
                await asyncio.sleep(0)
                yielded = monotonic()
            outcome = outcomes[job_index]
            prep = prepared[job_index]
            if prep is None:
                prep = prepared[job_index] = self._prepare_job(jobs[job_index], outcome)
            fs, template, base_sum, destination, timeout_ns, timeout_seconds = prep
            if fs is None:
                continue
            address = destination[0]
            sequence = next_sequence.get(address, 0)
            next_sequence[address] = (sequence + 1) & 0xFFFF
            key = (address, sequence)
            if key in pending:  # > 65,536 echoes in flight to one address: do not confuse them
                outcome.error, outcome.error_detail = ProbeErrorReason.SEND_FAILED, "sequence space full"
                continue
            pack_into("!HHH", template, 2, checksum_for_sequence(base_sum, sequence), identifier, sequence)
            packet: bytes | bytearray = template  # shared: valid only until this coroutine yields
            for attempt in range(_SEND_ATTEMPTS):
                sent_ns = clock_ns()
                try:
                    fs.sock.sendto(packet, destination)
                    after_ns = clock_ns()
                except BlockingIOError:  # socket send buffer full: let the kernel drain it, then retry
                    if attempt + 1 < _SEND_ATTEMPTS:
                        packet = bytes(packet)  # another cycle may patch the template while we sleep
                        await asyncio.sleep(0.001 * (attempt + 1))
                        continue
                    err: OSError | None = BlockingIOError(errno.EAGAIN, "send buffer full")
                except OSError as send_error:
                    # A socket reports a pending asynchronous error (an ICMP error for an earlier echo,
                    # maybe to another site) once, on whichever call comes next: retry once at once,
                    # so that only a failure of this send itself counts against this endpoint.
                    err = send_error
                    if attempt == 0:
                        continue
                else:
                    err = None
                break
            if err is not None:
                stats.send_errors += 1
                outcome.error = _SEND_ERRORS.get(err.errno or 0, ProbeErrorReason.SEND_FAILED)
                outcome.error_detail = err.strerror or str(err)
                continue
            pending[key] = (cycle, outcome, echo_index, sent_ns, timeout_ns)
            if fs.tx_stamps:
                fs.tx_sent.append((sent_ns, after_ns, key))
            keys.append(key)
            cycle.outstanding += 1
            outcome.sent += 1
            stats.echoes_sent += 1
            due = monotonic() + timeout_seconds
            if due > deadline:
                deadline = due
        return deadline

    def _prepare_job(self, job: EchoJob, outcome: EchoOutcome) -> _PreparedJob:
        fs = self._sockets.get(_family_of(job.address))
        if fs is None:
            outcome.error = ProbeErrorReason.UNSUPPORTED_FAMILY
            outcome.error_detail = "no ICMP socket for this address family"
            return (None, bytearray(), 0, (job.address, 0), 0, 0.0)
        template, base_sum = fs.template(self.identifier, self.cookie, job.payload_bytes)
        return (fs, template, base_sum, (job.address, 0), int(job.timeout_seconds * 1e9), job.timeout_seconds)

    @staticmethod
    def _schedule(jobs: Sequence[EchoJob]) -> Iterable[tuple[float, int, int]]:
        """(offset seconds from start, job index, echo index) for every echo, in send order.

        A round spans at most half the smallest spacing, so where every job has the same spacing
        (one group, the usual batch) send order is round after round: made lazily, as the sends go,
        instead of a sorted list of every echo (30,000 tuples, ~15 ms in one step at 10,000 sites).
        """
        smallest_spacing = min(job.spacing_seconds for job in jobs)
        gap = min(_MAX_ROUND_SPREAD_SECONDS, smallest_spacing * 0.5 / len(jobs))
        if all(job.spacing_seconds == smallest_spacing for job in jobs):
            return IcmpEngine._rounds(jobs, gap)
        schedule = [
            (i * gap + k * job.spacing_seconds, i, k)
            for i, job in enumerate(jobs)
            for k in range(job.count)
        ]
        schedule.sort()
        return schedule

    @staticmethod
    def _rounds(jobs: Sequence[EchoJob], gap: float) -> Iterator[tuple[float, int, int]]:
        """:meth:`_schedule` for jobs of one spacing, in the order a sort would give (same offsets)."""
        for k in range(max(job.count for job in jobs)):
            for i, job in enumerate(jobs):
                if k < job.count:
                    yield (i * gap + k * job.spacing_seconds, i, k)

    # ------------------------------------------------------------------ receiving
    def _drain(self, fs: _FamilySocket) -> None:
        """Read every datagram waiting on ``fs`` and settle the echoes they answer."""
        recvmsg = fs.sock.recvmsg
        pending = self._pending
        stats = self.stats
        cookie = self.cookie
        reply_type = _ECHO_REPLY[fs.family]
        error_types = _ICMP_ERRORS[fs.family]
        check_identifier = fs.privileged  # datagram sockets get the identifier rewritten by the kernel
        identifier = self.identifier
        strip = fs.strip_ip_header
        errors = 0
        if fs.tx_stamps or not fs.privileged:
            # Send stamps first: the replies below need them. Always, even with no echo waiting for
            # one: a non-empty error queue keeps the socket readable (EPOLLERR), and a reader that
            # left it full would be called again at once, for ever.
            self._drain_error_queue(fs)
        while True:
            try:
                data, ancillary, _flags, source = recvmsg(2048, 128)
            except (BlockingIOError, InterruptedError):
                if not fs.privileged:
                    self._drain_error_queue(fs)
                return
            except OSError as err:  # a datagram socket's pending error (its detail is in the error queue)
                log.debug("ICMP receive error: %s", err)
                errors += 1
                if errors >= _MAX_ERRORS_PER_DRAIN:
                    return
                continue
            received_ns = 0
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET:
                    if kind == _SO_TIMESTAMPNS:
                        seconds, nanoseconds = struct.unpack("qq", value[:16])
                        received_ns = seconds * 1_000_000_000 + nanoseconds
                    elif kind == _SO_RXQ_OVFL:
                        self._note_drops(fs, struct.unpack("I", value[:4])[0])
            offset = (data[0] & 0x0F) * 4 if strip and data else 0
            if len(data) < offset + 16 or data[offset] != reply_type:
                if len(data) > offset + 8 and data[offset] in error_types:
                    self._raw_error(fs, data, offset, source[0], received_ns)
                continue
            ident, sequence = struct.unpack_from("!HH", data, offset + 4)
            address = source[0].split("%", 1)[0] if fs.family == socket.AF_INET6 else source[0]
            entry = pending.get((address, sequence))
            if (entry is None or (check_identifier and ident != identifier)
                    or data[offset + 8:offset + 16] != cookie):
                stats.replies_unmatched += 1
                continue
            del pending[(address, sequence)]
            cycle, outcome, echo_index, sent_ns, timeout_ns = entry
            rtt_ns = (received_ns or time.time_ns()) - sent_ns
            if 0 <= rtt_ns <= timeout_ns:
                outcome.rtts_seconds[echo_index] = rtt_ns / 1e9
                stats.replies_matched += 1
            else:
                stats.replies_late += 1
            cycle.outstanding -= 1
            if cycle.outstanding == 0 and not cycle.sending:
                cycle.done.set()

    def _raw_error(self, fs: _FamilySocket, data: bytes, offset: int, offender: str, received_ns: int) -> None:
        """A raw socket got a destination-unreachable or time-exceeded message: find the echo it quotes."""
        quoted = offset + 8  # the original IP header follows the 8-byte ICMP error header
        if fs.family == socket.AF_INET:
            if len(data) < quoted + 20 or data[quoted + 9] != socket.IPPROTO_ICMP:
                return
            destination = socket.inet_ntop(socket.AF_INET, data[quoted + 16:quoted + 20])
            echo = quoted + (data[quoted] & 0x0F) * 4
        else:
            if len(data) < quoted + 40 or data[quoted + 6] != socket.IPPROTO_ICMPV6:
                return
            destination = socket.inet_ntop(socket.AF_INET6, data[quoted + 24:quoted + 40])
            echo = quoted + 40
        if len(data) < echo + 16 or data[echo] != _ECHO_REQUEST[fs.family]:
            return
        ident, sequence = struct.unpack_from("!HH", data, echo + 4)
        if ident != self.identifier:
            return
        if data[offset] == _TIME_EXCEEDED[fs.family]:
            self._settle_hop(destination, sequence, data[echo + 8:echo + 16], offender, received_ns)
        else:
            self._settle_unreachable(destination, sequence, data[echo + 8:echo + 16],
                                     _describe_unreachable(fs.family, data[offset + 1], offender), offender)

    def _drain_error_queue(self, fs: _FamilySocket) -> None:
        """Read a socket's error queue: kernel send stamps and, on a datagram socket, ICMP errors
        that quote one of our echoes."""
        batch = fs.error_batch
        if batch is not None:
            self._drain_error_batches(fs, batch)
            return
        recvmsg = fs.sock.recvmsg
        if fs.privileged:  # a raw socket's queue holds only send stamps (no IP_RECVERR): fast path
            apply_stamp = self._apply_send_stamp
            unpack = struct.unpack_from
            while True:
                try:
                    _data, ancillary, _flags, _source = recvmsg(0, 256, _MSG_ERRQUEUE)
                except OSError:
                    return
                for level, kind, value in ancillary:
                    if kind == _SO_TIMESTAMPING and level == socket.SOL_SOCKET:
                        seconds, nanoseconds = unpack("qq", value)
                        apply_stamp(fs, seconds * 1_000_000_000 + nanoseconds)
                        break
        icmp_errors = 0
        while True:
            try:
                data, ancillary, _flags, source = recvmsg(2048, 256, _MSG_ERRQUEUE)
            except OSError:  # empty (EAGAIN), or nothing more to say
                return
            icmp_errors += self._error_message(fs, data, ancillary, source)
            if icmp_errors >= _MAX_ERRORS_PER_DRAIN:
                return

    def _drain_error_batches(self, fs: _FamilySocket, batch: ErrorQueueBatch) -> None:
        """:meth:`_drain_error_queue` with ``recvmmsg``: up to a batch of messages per call, the
        send stamps read from its buffers (one ``recvmsg`` per stamp was ~3.5 µs, a quarter of
        the engine's CPU per echo)."""
        apply_stamp = self._apply_send_stamp
        send_stamp = batch.send_stamp
        icmp_errors = 0
        while True:
            try:
                count = batch.read()
            except OSError:
                return
            if fs.privileged:  # stamps only
                for stamp_ns in batch.send_stamps(count):
                    apply_stamp(fs, stamp_ns)
                if count < batch.batch:
                    return
                continue
            for i in range(count):
                is_stamp, stamp_ns = send_stamp(i)
                if is_stamp:
                    if stamp_ns:
                        apply_stamp(fs, stamp_ns)
                else:
                    data, ancillary, _flags, source = batch.as_recvmsg(i, fs.family)
                    icmp_errors += self._error_message(fs, data, ancillary, source)
            if count < batch.batch or icmp_errors >= _MAX_ERRORS_PER_DRAIN:
                return

    def _error_message(self, fs: _FamilySocket, data: bytes, ancillary: list[tuple[int, int, bytes]],
                       source: tuple[str, int]) -> int:
        """One error-queue message: a send stamp, or an ICMP error quoting an echo; 1 for the latter."""
        stamp_ns = 0
        send_stamp = False  # an ICMP error carries a stamp too: its receive time
        icmp_errors = 0
        hop: tuple[str, int, bytes, str] | None = None  # a time-exceeded answer to a trace's probe
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET:
                if kind == _SO_TIMESTAMPING:  # three timespecs; software is the first
                    seconds, nanoseconds = struct.unpack_from("qq", value)
                    stamp_ns = seconds * 1_000_000_000 + nanoseconds
                continue
            if len(value) < 16:
                continue
            # struct sock_extended_err: errno, origin, type, code, pad, info, data; then the offender
            _errno, origin, kind, code = struct.unpack_from("IBBB", value)
            if origin == _SO_EE_ORIGIN_TIMESTAMPING:
                send_stamp = True
                continue
            if (origin, kind) in ((2, 11), (3, 3)) and len(data) >= 16 and data[0] == _ECHO_REQUEST[fs.family]:
                destination = source[0].split("%", 1)[0] if fs.family == socket.AF_INET6 else source[0]
                hop = (destination, struct.unpack_from("!H", data, 6)[0], data[8:16],
                       _sockaddr_address(value[16:], fs.family) or "?")
                continue
            if (origin, kind) not in ((2, 3), (3, 1)) or len(data) < 16 or data[0] != _ECHO_REQUEST[fs.family]:
                continue
            icmp_errors += 1
            offender = _sockaddr_address(value[16:], fs.family) or "?"
            sequence = struct.unpack_from("!H", data, 6)[0]
            destination = source[0].split("%", 1)[0] if fs.family == socket.AF_INET6 else source[0]
            self._settle_unreachable(destination, sequence, data[8:16],
                                     _describe_unreachable(fs.family, code, offender), offender)
        if hop is not None:
            self._settle_hop(*hop, stamp_ns)
            return 1
        if send_stamp and stamp_ns:
            self._apply_send_stamp(fs, stamp_ns)
        return icmp_errors

    def _apply_send_stamp(self, fs: _FamilySocket, stamp_ns: int) -> None:
        """Give the echo whose send bracket holds this kernel stamp the kernel's send time."""
        sent = fs.tx_sent
        while sent and sent[0][1] < stamp_ns:  # sent before this stamp: no stamp of its own came
            sent.popleft()
        if not sent or stamp_ns < sent[0][0]:  # a late stamp of an echo already given up on
            return
        _before, _after, key = sent.popleft()
        entry = self._pending.get(key)
        if entry is not None:
            self._pending[key] = (entry[0], entry[1], entry[2], stamp_ns, entry[4])
            self.stats.kernel_send_stamps += 1

    def _settle_unreachable(self, destination: str, sequence: int, cookie: bytes, detail: str,
                            offender: str | None = None) -> None:
        entry = self._pending.get((destination, sequence))
        if entry is None or cookie != self.cookie:
            return
        del self._pending[(destination, sequence)]
        if (destination, sequence) in self._hops:
            self._hops[(destination, sequence)] = offender
        cycle, outcome, _echo_index, _sent_ns, _timeout_ns = entry
        outcome.unreachable += 1
        outcome.unreachable_detail = detail
        self.stats.destination_unreachable += 1
        cycle.outstanding -= 1
        if cycle.outstanding == 0 and not cycle.sending:
            cycle.done.set()

    def _settle_hop(self, destination: str, sequence: int, cookie: bytes, offender: str, received_ns: int) -> None:
        """A hop's time-exceeded message quotes a trace's probe: note the hop and its RTT.

        Only a trace's probes are settled this way; an ordinary echo that meets a routing loop
        stays unanswered, as before traces existed.
        """
        key = (destination, sequence)
        if key not in self._hops or cookie != self.cookie:
            return
        entry = self._pending.pop(key, None)
        if entry is None:
            return
        cycle, outcome, echo_index, sent_ns, timeout_ns = entry
        rtt_ns = (received_ns or time.time_ns()) - sent_ns
        if 0 <= rtt_ns <= timeout_ns:
            outcome.rtts_seconds[echo_index] = rtt_ns / 1e9
        self._hops[key] = offender
        cycle.outstanding -= 1
        if cycle.outstanding == 0 and not cycle.sending:
            cycle.done.set()

    def _note_drops(self, fs: _FamilySocket, total: int) -> None:
        previous = self._drops_seen.get(fs.family, 0)
        if total > previous:
            self.stats.receive_buffer_drops += total - previous
            self._drops_seen[fs.family] = total


def _describe_unreachable(family: int, code: int, offender: str) -> str:
    what = _UNREACHABLE_CODES[family].get(code, f"destination unreachable (code {code})")
    return f"{what} from {offender}"


def _sockaddr_address(raw: bytes, family: int) -> str | None:
    """The address in a raw ``sockaddr_in``/``sockaddr_in6`` (the offender of an extended error)."""
    if family == socket.AF_INET and len(raw) >= 8:
        return socket.inet_ntop(socket.AF_INET, raw[4:8])
    if family == socket.AF_INET6 and len(raw) >= 24:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24])
    return None


def _family_of(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _permission_message(mode: str, error: Exception | None) -> str:
    try:
        with open("/proc/sys/net/ipv4/ping_group_range", encoding="ascii") as f:
            group_range = " ".join(f.read().split())
    except OSError:
        group_range = "unknown"
    wanted = {"auto": "a raw or an unprivileged", "raw": "a raw", "unprivileged": "an unprivileged"}[mode]
    cause = "permission denied" if isinstance(error, SocketPermissionError) or error is None else str(error)
    return (
        f"cannot open {wanted} ICMP socket: {cause}.\n"
        f"  Raw ICMP needs root or the CAP_NET_RAW capability; unprivileged ICMP needs this process's "
        f"group (gid {os.getgid()}) inside net.ipv4.ping_group_range (now '{group_range}').\n"
        "  Fix one of:\n"
        "    - allow unprivileged ICMP:  sysctl -w net.ipv4.ping_group_range='0 2147483647'"
        "  (persist it in /etc/sysctl.d/)\n"
        "    - grant the capability:     AmbientCapabilities=CAP_NET_RAW in the systemd unit, or "
        "--cap-add NET_RAW for a container\n"
        "    - run as root"
    )
