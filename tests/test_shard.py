"""Sharding by rendezvous hashing: complete, disjoint, stable under additions, minimal under N → N+1."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.shard import Shard, owner, score
from tests.factories import target

NAMES = [f"school-{i:05d}" for i in range(10_000)] + ["№12 мектеп", "Ақтөбе \"Central\"", "🏫", ""]


@pytest.mark.parametrize("count", range(1, 9))
def test_n_instances_cover_every_site_exactly_once(count: int) -> None:
    """For N = 1..8, the shards' selections are disjoint and together hold every site, evenly."""
    targets = [target(n) for n in NAMES]
    chosen = [Shard(i, count).select(targets) for i in range(count)]
    names = [t.name for part in chosen for t in part]
    assert sorted(names) == sorted(NAMES)  # complete, and no site twice
    expected = len(NAMES) / count
    for part in chosen:  # each share within 5 standard deviations of a fair split
        assert abs(len(part) - expected) < 5 * math.sqrt(expected * (1 - 1 / count)) + 1


def test_adding_sites_moves_no_other_site() -> None:
    """A site's shard depends only on its name and N: adding sites leaves every other one in place."""
    for count in (2, 3, 5, 8):
        before = {n: owner(n, count) for n in NAMES[:5_000]}
        after = {t.name: i for i in range(count) for t in Shard(i, count).select(target(n) for n in NAMES)}
        assert all(after[n] == before[n] for n in before)


@pytest.mark.parametrize("count", range(1, 8))
def test_going_from_n_to_n_plus_1_moves_about_one_in_n_plus_1_all_to_the_new_shard(count: int) -> None:
    """N → N+1 moves only sites onto the new instance, about 1/(N+1) of them."""
    moved = [n for n in NAMES if owner(n, count) != owner(n, count + 1)]
    assert all(owner(n, count + 1) == count for n in moved)
    p = 1 / (count + 1)
    expected, sd = len(NAMES) * p, math.sqrt(len(NAMES) * p * (1 - p))
    assert abs(len(moved) - expected) < 5 * sd, (len(moved), expected)


def test_hash_is_stable_across_processes() -> None:
    """The weight is the same in a fresh interpreter (no salted hash()), pinned to known values."""
    here = [owner(n, 7) for n in NAMES[:50]] + [score("№12 мектеп", 3)]
    code = ("from monitor.shard import owner, score; "
            f"print([owner(n, 7) for n in {NAMES[:50]!r}] + [score('№12 мектеп', 3)])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "12345", "PATH": ""}, cwd=Path(__file__).resolve().parent.parent).stdout
    assert out.strip() == repr(here)
    assert owner("school-00000", 4) == owner("school-00000", 4)
    assert [owner(f"school-{i:05d}", 4) for i in range(8)] == PINNED_OWNERS_OF_4


PINNED_OWNERS_OF_4 = [1, 3, 1, 2, 2, 2, 1, 2]  # a changed hash would move every site of a fleet


@pytest.mark.parametrize("text", ["0/1", "3/4", "7/8"])
def test_parse_accepts_index_over_count(text: str) -> None:
    """I/N with 0 <= I < N parses and prints back the same."""
    assert str(Shard.parse(text)) == text
    assert Shard.parse(text).label == text.split("/")[0]


@pytest.mark.parametrize("text", ["4/4", "-1/4", "1/0", "1", "a/b", "1/2/3", ""])
def test_parse_refuses_anything_else(text: str) -> None:
    """Out-of-range or malformed shards are refused with a message showing the form."""
    with pytest.raises(ValueError, match="I/N"):
        Shard.parse(text)
