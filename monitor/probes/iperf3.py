"""The ``iperf3`` throughput method: the stock ``iperf3`` client against ``iperf3 -s`` at the site.

Normal mode sends from connmon to the site, so it measures the site's *download*; ``-R`` makes
the site send, so it measures the site's *upload*. The figure used is always the receiver's
(``end.sum_received``): what arrived, not what the sender pushed into its socket buffer.
``-O`` leaves TCP slow start out of the figure, as the operator's ``omit`` asks.

iperf3 allows one end condition: with ``bytes`` set the test ends at that many bytes (``-n``)
and ``duration`` only bounds it through the timeout; otherwise it runs ``duration`` (``-t``).
iperf3 takes whole seconds, so duration and omit are rounded up.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from monitor.config import Direction
from monitor.errors import ProbeErrorReason
from monitor.probes.throughput import run_tests
from monitor.results import DirectionResult, ThroughputResult
from monitor.targets import Target

if TYPE_CHECKING:
    from monitor.probes import ProbeContext

IPERF3 = "iperf3"


def find_iperf3() -> str | None:
    """The iperf3 binary's path, or None: the daemon warns once and reports ``tool_missing``."""
    return shutil.which(IPERF3)


def build_argv(binary: str, address: str, direction: Direction, target: Target) -> list[str]:
    """The client's argument list: typed settings become text here, and nothing passes through a shell."""
    s = target.throughput
    argv = [binary, "--client", address, "--port", str(s.port), "--json",
            "--omit", str(math.ceil(s.omit_seconds)), "--parallel", str(s.parallel),
            "--connect-timeout", str(int(s.timeout_seconds * 1000))]
    argv += ["--bytes", str(s.max_bytes)] if s.max_bytes is not None else ["--time", str(math.ceil(s.duration_seconds))]
    if direction == "upload":
        argv.append("--reverse")
    return argv


def classify_error(message: str) -> ProbeErrorReason:
    """Map iperf3's error text to a reason from the closed set."""
    text = message.lower()
    if "busy" in text:
        return ProbeErrorReason.BUSY
    if "refused" in text:
        return ProbeErrorReason.REFUSED
    if "no route" in text or "unreachable" in text:
        return ProbeErrorReason.NO_ROUTE
    if "timed out" in text or "timeout" in text:
        return ProbeErrorReason.TIMEOUT
    return ProbeErrorReason.FAILED


def parse_report(report: dict[str, Any]) -> tuple[float, int, float, int | None]:
    """(receiver bits/s, bytes moved including warm-up, receiver seconds, retransmits) from ``-J`` output.

    Raises:
        KeyError, TypeError, ValueError: the report lacks the receiver's figures.
    """
    end = report["end"]
    received = end["sum_received"]
    rate = float(received["bits_per_second"])
    seconds = float(received["seconds"])
    # The intervals include the omitted warm-up, which a metered link bills too.
    moved = sum(int(i["sum"]["bytes"]) for i in report.get("intervals", ()))
    moved = max(moved, int(received["bytes"]), int(end.get("sum_sent", {}).get("bytes", 0)))
    retransmits = end.get("sum_sent", {}).get("retransmits")
    return rate, moved, seconds, None if retransmits is None else int(retransmits)


async def measure(target: Target, address: str | None, direction: Direction, ctx: ProbeContext) -> DirectionResult:
    started_at = ctx.clock()
    binary = ctx.iperf3_path

    def failed(reason: ProbeErrorReason, detail: str, moved: int = 0) -> DirectionResult:
        return DirectionResult(direction, started_at, ctx.clock(), bytes=moved, error=reason, error_detail=detail)

    if binary is None:
        return failed(ProbeErrorReason.TOOL_MISSING, "iperf3 is not installed on the monitoring host")
    assert address is not None
    bound = target.throughput.test_bound_seconds
    argv = build_argv(binary, address, direction, target)
    outcome = await ctx.run_command(argv, bound)
    if outcome.returncode not in (0, None) and "refused" in outcome.stdout:
        # iperf3 -s re-opens its listening socket after each test, so right after a test (ours in the
        # other direction, or anyone's) it refuses for a moment. Once more, after a pause, before
        # calling the site refused.
        await asyncio.sleep(1.0)
        outcome = await ctx.run_command(argv, bound)
    if outcome.not_found:
        return failed(ProbeErrorReason.TOOL_MISSING, outcome.stderr.strip())
    if outcome.timed_out:
        return failed(ProbeErrorReason.TIMEOUT, f"no result from {address}:{target.throughput.port} within {bound:g}s")
    try:
        report = json.loads(outcome.stdout)
    except ValueError:
        detail = (outcome.stderr or outcome.stdout).strip()[:300] or f"iperf3 exited {outcome.returncode}"
        return failed(classify_error(detail), detail)
    if not isinstance(report, dict):
        return failed(ProbeErrorReason.FAILED, "iperf3 printed something other than a JSON report")
    if report.get("error"):
        message = str(report["error"])
        return failed(classify_error(message), message)
    try:
        rate, moved, seconds, retransmits = parse_report(report)
    except (KeyError, TypeError, ValueError) as err:
        return failed(ProbeErrorReason.FAILED, f"iperf3 report without receiver figures ({err})")
    return DirectionResult(direction, started_at, ctx.clock(), rate, moved, seconds, retransmits)


async def run(targets: Sequence[Target], ctx: ProbeContext) -> list[ThroughputResult]:
    """Test each target with iperf3, every configured direction."""
    return await run_tests(targets, ctx, "iperf3", measure, server=server)


def server(target: Target, address: str, _direction: Direction) -> tuple[str, int]:
    """iperf3's server: the address tested, the configured port (its handshake can unmask a PEP, issue 20)."""
    return address, target.throughput.port
