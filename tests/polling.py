"""Waiting, bounded, for something another thread does (a history writer, a server) to show."""

from __future__ import annotations

import time


def wait_for(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached")
