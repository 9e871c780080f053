"""Derived figures of an ICMP result: loss, min/avg/max and jitter, from raw per-echo RTTs."""

from __future__ import annotations

import pytest

from monitor.errors import ProbeErrorReason
from monitor.results import IcmpResult
from tests.factories import icmp, target

T = target("s")


def result(rtts: tuple[float | None, ...], sent: int | None = None) -> IcmpResult:
    return icmp(T, 0.0, *rtts, sent=sent)


def test_min_avg_max_and_jitter_as_mean_absolute_difference_of_consecutive_echoes() -> None:
    """Jitter is the mean |RTT(i+1) − RTT(i)| over consecutive answered echoes, not a deviation."""
    r = result((0.010, 0.030, 0.020, 0.060))
    assert (r.rtt_min_seconds, r.rtt_max_seconds) == (0.010, 0.060)
    assert r.rtt_avg_seconds == pytest.approx(0.030)
    assert r.jitter_seconds == pytest.approx((0.020 + 0.010 + 0.040) / 3)
    assert (r.received, r.loss_ratio, r.up) == (4, 0.0, True)


def test_lost_echoes_break_jitter_pairs_and_count_as_loss() -> None:
    """A lost echo between two answers is not a pair; loss is lost over attempted."""
    r = result((0.010, None, 0.050, 0.052, None))
    assert r.jitter_seconds == pytest.approx(0.002)
    assert r.loss_ratio == pytest.approx(0.4)
    assert result((0.010, None, 0.050)).jitter_seconds is None


def test_all_lost_and_nothing_sent() -> None:
    """No reply: down with loss 1 and no RTT figures; nothing sendable: loss 1 as well."""
    lost = result((None, None, None))
    assert (lost.up, lost.loss_ratio, lost.rtt_avg_seconds, lost.jitter_seconds) == (False, 1.0, None, None)
    unsent = IcmpResult(T, 0.0, None, 0, (), ProbeErrorReason.DNS)
    assert (unsent.up, unsent.loss_ratio, unsent.received) == (False, 1.0, 0)


def test_echoes_that_could_not_be_sent_are_lost_not_ignored() -> None:
    """4 of 5 sends failing (say, a full send buffer) is 80 % loss, not 0 %."""
    r = result((0.010, None, None, None, None), sent=1)
    assert (r.sent, r.received, r.loss_ratio) == (1, 1, pytest.approx(0.8))
