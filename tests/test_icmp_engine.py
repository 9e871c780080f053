"""The ICMP engine against real loopback sockets: RTTs from the kernel, every echo accounted for."""

from __future__ import annotations

import asyncio
import json
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from icmplib import ICMPv4Socket

from monitor.icmp.engine import EchoJob, IcmpEngine, checksum_for_sequence
from tests.conftest import need, need_root
from tests.factories import loopback
from tests.late_send import late_send_rtts


@settings(max_examples=300, deadline=None, derandomize=True)
@given(identifier=st.integers(0, 0xFFFF), sequence=st.integers(0, 0xFFFF), size=st.integers(16, 200))
def test_checksum_adjustment_matches_a_full_checksum(identifier: int, sequence: int, size: int) -> None:
    """Patching only the sequence and adjusting the sum gives icmplib's full checksum."""
    builder = ICMPv4Socket.__new__(ICMPv4Socket)  # only its packet builder, no socket
    builder._sock = None
    payload = bytes(range(size % 256)) * 2
    payload = payload[:size].ljust(size, b"x")
    base = builder._create_packet(identifier, 0, payload)
    base_sum = ~struct.unpack_from("!H", base, 2)[0] & 0xFFFF
    full = builder._create_packet(identifier, sequence, payload)
    assert checksum_for_sequence(base_sum, sequence) == struct.unpack_from("!H", full, 2)[0]


def test_rtts_come_from_the_kernel_even_when_the_loop_stalls() -> None:
    """A 200 ms stall of the event loop mid-cycle does not inflate loopback RTTs (kernel timestamps)."""
    need_root()

    async def main() -> list[float]:
        engine = IcmpEngine.open("raw")
        try:
            loop = asyncio.get_running_loop()
            loop.call_later(0.05, time.sleep, 0.2)  # blocks the loop while replies queue up
            outcomes = await engine.ping([EchoJob(a, 5, 0.02, 2.0) for a in loopback(50, 3)])
        finally:
            engine.close()
        assert all(o.sent == 5 for o in outcomes)
        return [r for o in outcomes for r in o.rtts_seconds if r is not None]

    rtts = asyncio.run(main())
    assert len(rtts) == 250
    # A wake-up clock would show the 200 ms stall; 20 ms leaves room for a loaded CI machine.
    assert max(rtts) < 0.020, f"max loopback RTT {max(rtts) * 1000:.2f} ms: a user-space clock leaked in"


def test_every_echo_of_a_2000_site_burst_is_accounted_for() -> None:
    """2,000 loopback sites in one round: no reply is lost to a full receive buffer."""
    need_root()

    async def main() -> tuple[int, int, int]:
        engine = IcmpEngine.open("raw")
        try:
            outcomes = await engine.ping([EchoJob(a, 1, 0.001, 2.0) for a in loopback(2000, 3)])
        finally:
            engine.close()
        return (sum(o.sent for o in outcomes), sum(1 for o in outcomes for r in o.rtts_seconds if r),
                engine.stats.receive_buffer_drops)

    sent, received, drops = asyncio.run(main())
    assert (sent, received, drops) == (2000, 2000, 0)


def test_a_second_pinger_with_the_same_identifier_does_not_corrupt_results() -> None:
    """Two engines with one identifier, same addresses, same time: each counts only its own replies."""
    need_root()

    async def main() -> None:
        first, second = IcmpEngine.open("raw"), IcmpEngine.open("raw")
        second.identifier = first.identifier  # the worst case: identical ids and sequence numbers
        try:
            jobs = [EchoJob(a, 4, 0.01, 1.0) for a in loopback(100, 3)]
            a, b = await asyncio.gather(first.ping(jobs), second.ping(jobs))
        finally:
            first.close()
            second.close()
        for engine, outcomes in ((first, a), (second, b)):
            assert all(o.sent == 4 and all(r is not None for r in o.rtts_seconds) for o in outcomes)
            assert engine.stats.replies_matched == 400
        # each raw socket saw the other's replies too, and rejected them by cookie
        assert first.stats.replies_unmatched + second.stats.replies_unmatched >= 400

    asyncio.run(main())


def test_empty_batch_and_ipv6_loopback() -> None:
    """An empty batch returns at once; ::1 is probed over the IPv6 socket."""
    need_root()

    async def main() -> None:
        engine = IcmpEngine.open("raw")
        try:
            assert await engine.ping([]) == []
            [outcome] = await engine.ping([EchoJob("::1", 3, 0.01, 1.0)])
        finally:
            engine.close()
        assert outcome.sent == 3 and None not in outcome.rtts_seconds and outcome.error is None

    asyncio.run(main())


def test_schedule_keeps_each_sites_echoes_spacing_apart_and_spreads_a_round() -> None:
    """Echo k of a site leaves at k × spacing (+ its slot); one round spans at most half the spacing."""
    jobs = [EchoJob(a, 3, 0.2, 1.0) for a in loopback(1000, 3)]
    schedule = list(IcmpEngine._schedule(jobs))
    assert len(schedule) == 3000
    assert [offset for offset, _, _ in schedule] == sorted(offset for offset, _, _ in schedule)
    times: dict[int, list[float]] = {}
    for offset, job, echo in schedule:
        times.setdefault(job, []).append(offset)
        assert echo == len(times[job]) - 1
    for offsets in times.values():
        assert offsets[1] - offsets[0] == pytest.approx(0.2) and offsets[2] - offsets[1] == pytest.approx(0.2)
    first_round = [times[j][0] for j in times]
    assert 0 < max(first_round) <= 0.1  # spread, not one burst, and over at most half the spacing
    few = list(IcmpEngine._schedule([EchoJob(a, 1, 0.2, 1.0) for a in loopback(3, 3)]))
    assert [round(offset, 6) for offset, _, _ in few] == [0.0, 0.001, 0.002]  # 1 ms apart at most


def test_a_schedule_of_one_spacing_made_lazily_is_the_sorted_one() -> None:
    """Jobs of one spacing (but other counts) get their echoes round after round, lazily: the very
    order and offsets of sorting every echo; mixed spacings are sorted."""
    jobs = [EchoJob(a, 1 + i % 4, 0.2, 1.0) for i, a in enumerate(loopback(500, 3))]
    lazy = IcmpEngine._schedule(jobs)
    assert not isinstance(lazy, list)
    gap = min(0.001, 0.2 * 0.5 / len(jobs))
    assert list(lazy) == sorted((i * gap + k * 0.2, i, k) for i, job in enumerate(jobs) for k in range(job.count))
    mixed = [EchoJob(a, 3, 0.05 if i % 2 else 0.2, 1.0) for i, a in enumerate(loopback(100, 3))]
    offsets = [offset for offset, _, _ in IcmpEngine._schedule(mixed)]
    assert offsets == sorted(offsets) and len(offsets) == 300


class _BusySocket:
    """A real socket whose every first ``sendto`` of a packet fails as if the send buffer were full.

    A full send buffer cannot be produced on loopback (it never blocks), so this is the one fake.
    """

    def __init__(self, real: object) -> None:
        self.real = real
        self.refused: set[bytes] = set()

    def sendto(self, data: bytes, address: tuple[str, int]) -> int:
        if bytes(data) not in self.refused:
            self.refused.add(bytes(data))
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return self.real.sendto(data, address)  # type: ignore[attr-defined,no-any-return]

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)


def test_a_send_that_would_block_is_retried_with_its_own_bytes() -> None:
    """EAGAIN on sendto is retried; two cycles sharing the packet template never swap sequence numbers."""
    need_root()

    async def main() -> None:
        engine = IcmpEngine.open("raw")
        second = [EchoJob(f"127.6.0.{i + 1}", 3, 0.01, 1.0) for i in range(50)]
        await engine.ping(second)  # moves these addresses' sequence numbers ahead of the others'
        fs = engine._sockets[2]  # AF_INET
        fs.sock = _BusySocket(fs.sock)  # type: ignore[assignment]
        try:
            a, b = await asyncio.gather(engine.ping([EchoJob(x, 3, 0.01, 1.0) for x in loopback(50, 3)]),
                                        engine.ping(second))
        finally:
            fs.sock = fs.sock.real  # type: ignore[attr-defined]
            engine.close()
        for outcomes in (a, b):
            assert all(o.sent == 3 and None not in o.rtts_seconds for o in outcomes)
        assert engine.stats.replies_unmatched == 0 and engine.stats.send_errors == 0

    asyncio.run(main())


def _assert_send_times_are_the_kernels(found: dict[str, object]) -> None:
    rtts = found["rtts"]
    assert isinstance(rtts, list) and len(rtts) == 120 and None not in rtts, rtts
    assert found["late"] == 24 and found["sent"] == 120
    assert found["kernel_stamps"] == 120, "every echo's send time should come from the kernel"
    assert max(rtts) < 0.005, f"max loopback RTT {max(rtts) * 1000:.2f} ms: the send clock was read in Python"


@pytest.mark.parametrize("batched", [True, False], ids=["recvmmsg", "recvmsg"])
def test_a_send_delayed_after_the_clock_read_does_not_inflate_rtt_raw(batched: bool) -> None:
    """Send times come from the kernel (SO_TIMESTAMPING): an echo that leaves 20 ms after the Python
    clock was read (a preempted process on a loaded machine) still reports its true loopback RTT."""
    need_root()
    _assert_send_times_are_the_kernels(asyncio.run(late_send_rtts("raw", batched)))


@pytest.mark.parametrize("batched", [True, False], ids=["recvmmsg", "recvmsg"])
def test_a_send_delayed_after_the_clock_read_does_not_inflate_rtt_unprivileged(batched: bool) -> None:
    """The same on an unprivileged datagram ICMP socket, whose error queue also carries ICMP errors:
    run in a child in a fresh network namespace (lo up, ping_group_range open there only)."""
    need_root()
    need(shutil.which("unshare") is not None, "needs unshare (util-linux)")
    code = ("import asyncio, json; from tests.late_send import late_send_rtts; "
            f"print(json.dumps(asyncio.run(late_send_rtts('unprivileged', {batched}))))")
    proc = subprocess.run(
        ["unshare", "--net", "sh", "-ec",
         "ip link set lo up; sysctl -qw net.ipv4.ping_group_range='0 2147483647'; "
         f'exec "{sys.executable}" -c "{code}"'],
        capture_output=True, text=True, timeout=60, check=False,
        cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr
    _assert_send_times_are_the_kernels(json.loads(proc.stdout))


def _quoted_v4(ihl: int, tail: bytes) -> bytes:
    """An ICMP error header, then a quoted IPv4 header claiming ICMP with any IHL, then anything."""
    return b"\x03\x01\0\0\0\0\0\0" + bytes([0x40 | ihl]) + b"\0" * 8 + b"\x01" + b"\0" * 10 + tail


def _quoted_v6(tail: bytes) -> bytes:
    """An ICMPv6 error header, then a quoted IPv6 header claiming ICMPv6, then anything."""
    return b"\x01\x03\0\0\0\0\0\0" + b"\x60" + b"\0" * 5 + b"\x3a" + b"\0" * 33 + tail


@settings(max_examples=400, deadline=None, derandomize=True)
@given(packet=st.one_of(
    st.tuples(st.just(2), st.binary(max_size=120)),
    st.tuples(st.just(2), st.builds(_quoted_v4, st.integers(0, 15), st.binary(max_size=40))),
    st.tuples(st.just(10), st.binary(max_size=120)),
    st.tuples(st.just(10), st.builds(_quoted_v6, st.binary(max_size=40)))), time_exceeded=st.booleans())
def test_malformed_icmp_errors_never_raise(packet: tuple[int, bytes], time_exceeded: bool) -> None:
    """Whatever arrives as a destination-unreachable or time-exceeded message (truncated, lying headers),
    parsing never raises."""
    need_root()
    family, data = packet
    if time_exceeded and data:  # the same body as a hop's answer to a trace (issue 21)
        data = bytes([11 if family == 2 else 3]) + data[1:]
    engine = IcmpEngine.open("raw")
    try:
        fs = engine._sockets.get(family)
        if fs is not None:
            engine._raw_error(fs, data, 0, "192.0.2.1", 0)
        assert engine.stats.destination_unreachable == 0  # nothing pending could be matched
    finally:
        engine.close()


def test_send_stamps_left_after_a_cycle_do_not_keep_the_reader_spinning() -> None:
    """Kernel send stamps still queued when no echo waits for them are read and dropped: a socket
    left with a non-empty error queue stays readable and would call its reader in a busy loop."""
    need_root()

    async def main() -> None:
        engine = IcmpEngine.open("raw")
        try:
            await engine.ping([EchoJob(a, 1, 0.01, 1.0) for a in loopback(5, 3)])
            fs = engine._sockets[2]  # AF_INET
            calls = 0
            real_drain = engine._drain

            def counting_drain(fs_: object) -> None:
                nonlocal calls
                calls += 1
                real_drain(fs_)  # type: ignore[arg-type]

            loop = asyncio.get_running_loop()
            loop.remove_reader(fs.sock.fileno())
            loop.add_reader(fs.sock.fileno(), counting_drain, fs)
            # Echoes sent behind the engine's back: stamps (and replies) nobody waits for.
            template, base_sum = fs.template(engine.identifier, engine.cookie, 56)
            for address in loopback(20, 3):
                fs.sock.sendto(bytes(template), (address, 0))
            await asyncio.sleep(0.3)
            assert calls < 20, f"the reader ran {calls} times in 0.3 s: the error queue is never emptied"
            assert calls >= 1
        finally:
            engine.close()

    asyncio.run(main())


def test_batched_error_queue_reads_give_each_send_its_own_stamp() -> None:
    """recvmmsg in batches of 64: 300 echoes sent back to back leave 300 stamps, read in several
    batches, in send order, each inside the Python clock's bracket around its own sendto."""
    need_root()
    engine = IcmpEngine.open("raw")
    try:
        fs = engine._sockets[2]  # AF_INET
        batch = fs.error_batch
        assert batch is not None and fs.tx_stamps
        template, _sum = fs.template(engine.identifier, engine.cookie, 56)
        brackets = []
        for address in loopback(300, 3):
            before = time.time_ns()
            fs.sock.sendto(bytes(template), (address, 0))
            brackets.append((before, time.time_ns()))
        stamps: list[int] = []
        reads = []
        deadline = time.monotonic() + 5
        while len(stamps) < 300 and time.monotonic() < deadline:
            count = batch.read()
            reads.append(count)
            stamps += batch.send_stamps(count)
        assert batch.read() == 0, "stamps beyond one per send"
        assert len(stamps) == 300 and max(reads) == batch.batch and len(reads) >= 5, reads
        assert all(lo <= stamp <= hi for stamp, (lo, hi) in zip(stamps, brackets, strict=True))
    finally:
        engine.close()
