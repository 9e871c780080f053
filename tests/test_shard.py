"""Sharding by rendezvous hashing: complete, disjoint, stable under additions, minimal under N → N+1."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.shard import Shard, owner, owners, score
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


# ---------------------------------------------------------------------------- replicas (issue 19)

@pytest.mark.parametrize("replicas", [1, 2, 3])
@pytest.mark.parametrize("count", range(1, 9))
def test_every_site_sits_on_exactly_min_r_n_instances(count: int, replicas: int) -> None:
    """For N = 1..8 and R = 1..3, each site is selected by exactly min(R, N) distinct instances, evenly spread."""
    r = min(replicas, count)
    targets = [target(n) for n in NAMES]
    chosen = [Shard(i, count, r).select(targets) for i in range(count)]
    holders: dict[str, list[int]] = {}
    for index, part in enumerate(chosen):
        for t in part:
            holders.setdefault(t.name, []).append(index)
    assert sorted(holders) == sorted(NAMES)
    assert all(len(set(v)) == len(v) == r for v in holders.values())
    expected = len(NAMES) * r / count
    for part in chosen:
        assert abs(len(part) - expected) < 5 * math.sqrt(expected) + 1
    for name in NAMES[:500]:  # the first replica is the R = 1 owner, so R = 1 is today's behaviour
        ranks = sorted(Shard(i, count, r).rank(name) for i in holders[name])
        assert ranks == list(range(r))
        assert Shard(owner(name, count), count, r).rank(name) == 0


@pytest.mark.parametrize("replicas", [1, 2, 3])
@pytest.mark.parametrize("count", range(1, 8))
def test_n_to_n_plus_1_with_replicas_moves_only_onto_the_new_instance(count: int, replicas: int) -> None:
    """N → N+1: a site's set changes only by the new instance coming in and its lowest replica going,
    for about min(R, N+1)/(N+1) of the sites (one assignment each), or it gains the new one when R > N."""
    before = {n: set(owners(n, count, replicas)) for n in NAMES}
    after = {n: set(owners(n, count + 1, replicas)) for n in NAMES}
    changed = [n for n in NAMES if before[n] != after[n]]
    for n in changed:
        assert after[n] - before[n] == {count}  # only the new instance comes in
        assert len(before[n] - after[n]) == (1 if replicas <= count else 0)  # one leaves, unless R > N
    p = min(replicas, count + 1) / (count + 1)
    expected, sd = len(NAMES) * p, math.sqrt(len(NAMES) * p * (1 - p))
    assert abs(len(changed) - expected) < 5 * sd + 1, (len(changed), expected)


def test_replicas_flag_folds_into_the_shard_and_needs_one(tmp_path: Path) -> None:
    """--replicas R needs --shard; R > N is capped at N; the labels stay the index."""
    from monitor.cli_parser import build_parser, with_replicas

    parser = build_parser()
    config = str(tmp_path / "c.yaml")
    args = parser.parse_args(["run", "--config", config, "--shard", "1/3", "--replicas", "2"])
    with_replicas(parser, args)
    assert args.shard == Shard(1, 3, 2) and args.shard.label == "1"
    args = parser.parse_args(["run", "--config", config, "--shard", "0/2", "--replicas", "5"])
    with_replicas(parser, args)
    assert args.shard.replicas == 2
    args = parser.parse_args(["run", "--config", config, "--replicas", "2"])
    with pytest.raises(SystemExit):
        with_replicas(parser, args)
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--config", config, "--shard", "0/2", "--replicas", "0"])
