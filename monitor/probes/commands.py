"""Running an external tool (``iperf3``) as a subprocess: an argument list, a deadline, no shell.

Nothing from the config reaches a shell: the argv is a list of typed values turned into text by
the probe, and the child runs in its own session so that killing it at the deadline also kills
anything it started. Probes receive a :data:`CommandRunner` through their context so tests can
hand in their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """What a finished (or killed) command left behind."""

    returncode: int | None  # None when it was killed at the deadline
    stdout: str
    stderr: str
    timed_out: bool = False
    not_found: bool = False  # the executable does not exist


CommandRunner = Callable[[Sequence[str], float], Awaitable[CommandOutcome]]


async def run_command(argv: Sequence[str], timeout_seconds: float) -> CommandOutcome:
    """Run ``argv`` and collect its output; kill it (and its session) after ``timeout_seconds``.

    Cancellation (daemon shutdown) kills the child too, so no test keeps running unowned.
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
    except FileNotFoundError:
        return CommandOutcome(None, "", f"{argv[0]}: not found", not_found=True)
    except PermissionError as err:
        return CommandOutcome(None, "", f"{argv[0]}: {err.strerror}", not_found=True)
    try:
        out, errout = await asyncio.wait_for(proc.communicate(), timeout_seconds)
    except TimeoutError:
        _kill(proc)
        out, errout = await proc.communicate()
        return CommandOutcome(None, out.decode("utf-8", "replace"), errout.decode("utf-8", "replace"), timed_out=True)
    except asyncio.CancelledError:
        _kill(proc)
        with contextlib.suppress(Exception):
            await asyncio.shield(proc.wait())
        raise
    return CommandOutcome(proc.returncode, out.decode("utf-8", "replace"), errout.decode("utf-8", "replace"))


def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
