"""Shared fixtures: the network lab, and the rule that CI never skips what it cannot do.

With ``CI=true`` a test that needs root or network namespaces *fails* when they are missing,
so a broken CI machine cannot pass by skipping the tests that matter.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from tests.netlab import Lab, can_make_namespaces

IN_CI = os.environ.get("CI", "").lower() == "true"
_lab_numbers = itertools.count(1)
# Runs side by side (one per worktree) can put a short tag of their own into every namespace name.
_LAB_TAG = os.environ.get("CONNMON_TEST_LAB_TAG", "")
assert _LAB_TAG.isalnum() and len(_LAB_TAG) <= 4 or _LAB_TAG == "", "CONNMON_TEST_LAB_TAG: up to 4 letters or digits"


def need(ok: bool, reason: str) -> None:
    """Skip when ``ok`` is false, or fail under CI=true."""
    if not ok:
        if IN_CI:
            pytest.fail(f"CI=true and this test cannot run: {reason}")
        pytest.skip(reason)


def need_root() -> None:
    need(os.geteuid() == 0, "needs root (raw ICMP sockets)")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """A fresh prober namespace for the module; sites are added by the tests' own fixtures."""
    ok, reason = can_make_namespaces()
    need(ok, reason)
    the_lab = Lab(tag=f"{_LAB_TAG}{next(_lab_numbers)}").open()
    try:
        yield the_lab
    finally:
        the_lab.close()

