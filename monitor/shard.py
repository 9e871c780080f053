"""Sharding: which endpoints one of N connmon instances probes (``--shard I/N``, issue 9).

A national deployment runs N instances side by side (systemd template units, or a Kubernetes
StatefulSet whose ordinal is I). Each endpoint belongs to exactly one of them, chosen by
rendezvous (highest-random-weight) hashing of the endpoint *name*: every instance scores every
shard index with a stable hash of (index, name) and the highest score wins. So

* all instances agree without talking to each other (they only need the same config and N);
* adding or removing a site moves no other site (a name's owner depends only on that name and N);
* going from N to N+1 instances moves only the sites whose new shard N scores highest:
  about 1/(N+1) of them, all onto the new instance.

The hash is BLAKE2b (stable across processes and Python versions), never ``hash()``, which is
salted per process. The index I counts from 0, like a StatefulSet ordinal. Series of a sharded
instance carry ``shard="I"`` (see :mod:`monitor.exposition.sink`); N is left out of the label so that a
site that stays on its instance when N changes keeps its series.

Replicas (issue 19): with ``--replicas R`` each endpoint goes to the R instances with the highest
weights instead of the one, so a site stays watched when one of its instances dies. Its replicas
differ only in the ``shard`` label; recording rules merge them in PromQL and the history merges
their cycles per interval. The rank of an instance among a site's replicas (0: the highest weight)
decides which one runs the site's throughput test while it is alive. Going from N to N+1 instances
moves only the assignments the new instance now wins: about R/(N+1) of them, all onto it.

It only selects targets: scheduling, probing and metrics are unaware of the other instances.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from monitor.targets import Target


@dataclass(frozen=True, slots=True)
class Shard:
    """This instance's share: index ``index`` (0-based) of ``count`` instances, each site on ``replicas`` of them."""

    index: int
    count: int
    replicas: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: need 0 <= I < N and N >= 1")
        if self.replicas < 1:
            raise ValueError(f"--replicas {self.replicas}: need at least 1")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """Parse ``I/N`` (e.g. ``2/4``: the third of four instances).

        Raises:
            ValueError: not two integers with 0 <= I < N; the message says what is expected.
        """
        index, sep, count = text.partition("/")
        try:
            if not sep:
                raise ValueError
            return cls(int(index), int(count))
        except ValueError:
            raise ValueError(f"{text!r} is not a shard: expected I/N with 0 <= I < N, e.g. 0/4 … 3/4") from None

    @property
    def label(self) -> str:
        """The value of the ``shard`` label on this instance's series."""
        return str(self.index)

    def owns(self, name: str) -> bool:
        if self.replicas == 1:
            return owner(name, self.count) == self.index
        return self.index in owners(name, self.count, self.replicas)

    def rank(self, name: str) -> int:
        """This instance's place among ``name``'s instances by weight: 0 for the first; R or more: not one of them."""
        return ranking(name, self.count).index(self.index)

    def select(self, targets: Iterable[Target]) -> tuple[Target, ...]:
        """The targets this instance probes, in their original order."""
        return tuple(t for t in targets if self.owns(t.name))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}" + (f" ×{self.replicas}" if self.replicas > 1 else "")


def score(name: str, index: int) -> int:
    """The rendezvous weight of shard ``index`` for endpoint ``name``: 64 bits of BLAKE2b."""
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8, person=b"connmon-shard",
                             salt=index.to_bytes(8, "big")).digest()
    return int.from_bytes(digest, "big")


def owner(name: str, count: int) -> int:
    """The shard index (0 … count-1) that probes endpoint ``name`` when there are ``count`` shards."""
    if count == 1:
        return 0
    best, best_score = 0, -1
    for index in range(count):
        weight = score(name, index)
        if weight > best_score:  # ties (2^-64) go to the lower index, the same on every instance
            best, best_score = index, weight
    return best


def ranking(name: str, count: int) -> tuple[int, ...]:
    """Every shard index ordered by its weight for ``name``, highest first (ties: the lower index first)."""
    return tuple(sorted(range(count), key=lambda index: (-score(name, index), index)))


def owners(name: str, count: int, replicas: int) -> tuple[int, ...]:
    """The min(replicas, count) shard indexes that probe ``name``, highest weight first."""
    if replicas == 1:
        return (owner(name, count),)
    return ranking(name, count)[:replicas]


def own_share(targets: Sequence[Target], shard: Shard | None) -> tuple[Target, ...]:
    """``targets`` limited to ``shard``'s share; all of them when not sharded."""
    return tuple(targets) if shard is None else shard.select(targets)
