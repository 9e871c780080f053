"""Time windows and data sizes: parsed at the config boundary, answered for absolute times."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from monitor.config.sizes import parse_size
from monitor.config.windows import current_or_next, is_allowed, parse_window

ALMATY = "Asia/Almaty"


def at(text: str, zone: str = ALMATY) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


def test_a_night_window_crosses_midnight() -> None:
    """'22:00-06:00' allows 23:30 and 05:59 local time but not 06:00 or noon."""
    night = (parse_window("22:00-06:00"),)
    assert is_allowed(at("2026-11-25T23:30"), night, ALMATY)
    assert is_allowed(at("2026-11-26T05:59"), night, ALMATY)
    assert not is_allowed(at("2026-11-26T06:00"), night, ALMATY)
    assert not is_allowed(at("2026-11-26T12:00"), night, ALMATY)
    start, end = current_or_next(at("2026-11-26T12:00"), night, ALMATY)
    assert (start, end) == (at("2026-11-26T22:00"), at("2026-11-27T06:00"))


def test_school_hours_skip_the_weekend() -> None:
    """'Mon-Fri 08:00-15:00' asked on Friday evening opens next Monday at 08:00 (2026-11-27 is a Friday)."""
    school = (parse_window("Mon-Fri 08:00-15:00"),)
    assert is_allowed(at("2026-11-27T09:00"), school, ALMATY)
    assert not is_allowed(at("2026-11-28T09:00"), school, ALMATY)  # Saturday
    assert current_or_next(at("2026-11-27T16:00"), school, ALMATY)[0] == at("2026-11-30T08:00")


def test_windows_follow_daylight_saving() -> None:
    """In Berlin a 02:00-04:00 window on the night clocks go back still ends at 04:00 local."""
    window = (parse_window("01:00-04:00"),)
    start, end = current_or_next(at("2026-10-25T00:00", "Europe/Berlin"), window, "Europe/Berlin")
    assert start == at("2026-10-25T01:00", "Europe/Berlin")
    assert end - start == 4 * 3600  # three wall-clock hours, four real ones: the clock went back


def test_no_windows_means_always() -> None:
    """Without windows every instant is allowed."""
    assert is_allowed(at("2026-11-25T03:00"), (), ALMATY)


@pytest.mark.parametrize("text", ["22:00", "25:00-06:00", "Mon-Xyz 08:00-15:00", "8-15", "24:00-06:00"])
def test_bad_windows_are_refused(text: str) -> None:
    """Malformed window text raises ValueError with the text in the message."""
    with pytest.raises(ValueError):
        parse_window(text)


def test_overlapping_windows_merge() -> None:
    """Two overlapping windows give one stretch ending where the later one ends."""
    windows = (parse_window("08:00-12:00"), parse_window("11:00-14:00"))
    assert current_or_next(at("2026-11-25T09:00"), windows, ALMATY) == (at("2026-11-25T09:00"), at("2026-11-25T14:00"))


@pytest.mark.parametrize(("text", "size"), [("25MB", 25_000_000), ("2GiB", 2 * 1024**3), ("500000", 500_000),
                                            ("1.5 GB", 1_500_000_000), ("64kB", 64_000)])
def test_sizes(text: str, size: int) -> None:
    """Sizes in decimal and binary units become bytes."""
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["5 apples", "MB", "-3MB", ""])
def test_bad_sizes(text: str) -> None:
    """Anything else is refused."""
    with pytest.raises(ValueError):
        parse_size(text)
