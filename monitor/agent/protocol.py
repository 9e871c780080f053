"""The wire format between a site agent and the centre (issue 10), version 2: JSON over HTTP.

An agent measures from inside a site behind carrier-grade NAT and posts what it measured to the
centre, ``POST /api/v1/agent/results`` with ``Authorization: Bearer TOKEN``::

    {"site": "school-vsat-01",
     "agent": {"version": "0.1.0", "instance": "3f2a…", "boot_id": "8c1e…", "uptime_seconds": 5123.4,
               "sent_at": 1764680000.25, "spool_dropped": 0},
     "results": [
       {"seq": 41, "type": "icmp", "path": "centre", "started_at": 1764679940.0, "address": "10.77.0.1",
        "sent": 10, "rtts_seconds": [0.61, null, 0.62, …], "error": null, "error_detail": ""},
       {"seq": 42, "type": "throughput", "method": "iperf3", "slot": "a1b2", "started_at": …, "ended_at": …,
        "address": "10.77.0.1", "error": null, "error_detail": "",
        "directions": [{"direction": "download", "started_at": …, "ended_at": …, "bits_per_second": 7.9e6,
                        "bytes": 10400000, "measured_seconds": 10.0, "retransmits": 3,
                        "error": null, "error_detail": ""}]}]}

Why it looks like this:

* A result is the same fact a centre probe produces (:mod:`monitor.results`), in base units and
  unrounded, so the centre turns it into the same :class:`~monitor.results.IcmpResult` /
  :class:`~monitor.results.ThroughputResult` and every sink treats it as its own. The centre's
  config, not the agent, says which site a result belongs to and with which labels: an agent
  can only report for the one endpoint its token was issued for.
* ``seq`` numbers every result of one agent installation (``instance``) from 1, strictly
  increasing: uploads of the spool can be repeated after a lost answer, and the centre ignores
  what it already has. A reinstalled agent has a new ``instance`` and starts again at 1.
* ``boot_id`` and ``uptime_seconds`` let the centre tell, after a silence, a power cut (a new
  boot that is younger than the gap) from a link cut (the same boot, with spooled results
  measured during the gap).
* Everything is checked before anything is used (:mod:`monitor.agent.decode`), so a half-applied batch can never be.

Versions (issue 25, "refuse results, not batches"): an agent that speaks version 2 says so in the
header ``Connmon-Protocol: 2``. The centre then checks the envelope (token, ``site``, ``agent``, the
list and each result's ``seq``) as a whole, and each result on its own: the 200 answer lists every
result as ``stored``, ``duplicate`` or ``refused`` with the field and the reason, and a refusal whose
cause can pass (a time stamped in the future by a clock that was fast) carries
``retry_after_seconds``: the agent keeps that result until then, and drops only the others. Without
the header (a version 1 agent) one bad value rejects the whole batch (400), as version 1 did; a
version 1 centre ignores the header and answers without ``results``, which a version 2 agent reads
as every result taken. So either side works with the other one version older.

Clocks and the fleet (issue 18), additive to version 2: see :mod:`monitor.agent.clock`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from monitor.agent.clock import ClockOffset
from monitor.errors import ProbeErrorReason
from monitor.results import DirectionResult, IcmpResult, ThroughputResult
from monitor.text import clean_detail

VERSION = 2
PROTOCOL_HEADER = "Connmon-Protocol"  # the version the agent speaks; absent: 1 (issue 25)
ROUTES_PREFIX = "/api/v1/agent/"  # the agents' routes: each site's bearer token, not the web config's basic auth
RESULTS_PATH = "/api/v1/agent/results"
SLOT_PATH = "/api/v1/agent/slot"
DOWNLOAD_PATH = "/api/v1/agent/download"
SETTINGS_PATH = "/api/v1/agent/settings"  # what the site measures, from the centre's config (issue 18)
UPLOAD_PATH = "/api/v1/agent/upload"
ENROL_PATH = "/api/v1/agent/enrol"  # a one-time code traded for the site's token, no bearer token (issue 18)

BODY_IDLE_SECONDS = 30.0  # no byte of a body for this long: 408 (a VSAT link stalls for seconds, not half a minute)
MAX_BODY_BYTES = 2 * 1024 * 1024  # a batch of 500 ICMP results of 10 echoes is ~150 KB
MAX_RESULTS_PER_BATCH = 1000
MAX_ECHOES = 10_000
MAX_RTT_SECONDS = 120.0  # a reply later than this is not a reply any timeout allows
MAX_FUTURE_SKEW_SECONDS = 300.0  # an agent's clock may run this much ahead of the centre's
MAX_ROUND_TRIP_SECONDS = 3600.0
# issue 20: a direction's latency-under-load samples (idle burst, loaded samples, TCP handshakes)
LATENCY_FIELDS = ("idle_rtts_seconds", "loaded_rtts_seconds", "connect_seconds")
ANCHOR_FIELDS = ("boot_id", "uptime_seconds")  # issue 18: a result's start on the boot's clock (monitor.agent.decode)
MAX_AGE_SECONDS = 400 * 86400.0  # older than the longest retention: nothing would keep it
MAX_BITS_PER_SECOND = 1e12
MAX_BYTES = 10**13
MAX_TEXT = 500
ICMP_PATHS = ("centre", "gateway")
MAX_TEST_BYTES = 10 * 1024**3  # the most one direction of a granted HTTP test may move
UNCAPPED_BITS_PER_SECOND = 1e9  # an uncapped test's allowance: what this rate moves in the test's bound

IcmpPath = Literal["centre", "gateway"]


class ProtocolError(ValueError):
    """A batch (or, in version 2, a result) the centre refuses: ``field`` names where, as a JSON path.

    ``retry_after_seconds``: set when the cause can pass by itself (a time in the future: the same
    result is taken once the centre's clock reaches it), with how long until then.
    """

    def __init__(self, field: str, message: str, retry_after_seconds: float | None = None) -> None:
        self.field = field
        self.reason = message
        self.retry_after_seconds = retry_after_seconds
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True, slots=True)
class RefusedResult:
    """A result of a version 2 batch the centre refused on its own: where, why, and whether it can pass."""

    seq: int
    field: str
    reason: str
    retry_after_seconds: float | None = None  # None: it will never be taken; else when it may be


ResultOutcome = Literal["stored", "duplicate", "refused"]


def result_answer(seq: int, outcome: ResultOutcome, refused: RefusedResult | None = None) -> dict[str, Any]:
    """One result's line in a version 2 answer (the wire's one definition, read by :func:`read_result_answers`)."""
    line: dict[str, Any] = {"seq": seq, "outcome": outcome}
    if refused is not None:
        line.update(field=refused.field, reason=refused.reason,
                    retry_after_seconds=None if refused.retry_after_seconds is None
                    else round(refused.retry_after_seconds, 3))
    return line


def read_result_answers(body: Any) -> list[RefusedResult | int] | None:
    """The per-result lines of a centre's 200 answer: a seq taken (stored or duplicate) or what was refused.

    None when the answer has no such list (a version 1 centre: every result was taken); a list that
    is there but not understood raises ``ValueError``, so nothing is dropped on a misreading.
    """
    if not isinstance(body, dict) or "results" not in body:
        return None
    lines = body["results"]
    if not isinstance(lines, list):
        raise ValueError("results is not a list")
    read: list[RefusedResult | int] = []
    for line in lines:
        if not isinstance(line, dict) or not isinstance(line.get("seq"), int) or isinstance(line.get("seq"), bool):
            raise ValueError(f"not a result line: {line!r:.200}")
        outcome = line.get("outcome")
        if outcome in ("stored", "duplicate"):
            read.append(line["seq"])
        elif outcome == "refused":
            wait = line.get("retry_after_seconds")
            if wait is not None and (isinstance(wait, bool) or not isinstance(wait, int | float)
                                     or not math.isfinite(wait) or wait < 0):
                raise ValueError(f"retry_after_seconds is not a number of seconds: {wait!r:.50}")
            read.append(RefusedResult(line["seq"], str(line.get("field", "")), str(line.get("reason", "")),
                                      None if wait is None else float(wait)))
        else:
            raise ValueError(f"unknown outcome {outcome!r:.50}")
    return read


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """Who sent a batch: the agent's software and the machine's boot, for liveness and gap causes."""

    version: str
    instance: str
    boot_id: str
    uptime_seconds: float
    sent_at: float
    spool_dropped: int = 0
    round_trip_seconds: float | None = None  # issue 18: the agent's last exchange, sent to a centre that measures
    spool_depth: int | None = None  # issue 18: results waiting in the agent's spool


@dataclass(frozen=True, slots=True)
class AgentResult:
    """One decoded result with its sequence number; ``path`` says what an ICMP result measured."""

    seq: int
    result: IcmpResult | ThroughputResult
    path: IcmpPath = "centre"
    slot: str | None = None  # the throughput slot this test used (released when the result arrives)
    corrected: bool = False  # issue 18: its times were moved by the agent's measured clock offset


@dataclass(frozen=True, slots=True)
class Batch:
    site: str
    agent: AgentInfo
    results: tuple[AgentResult, ...]
    refused: tuple[RefusedResult, ...] = ()  # version 2: results refused on their own (the others are in results)
    clock: ClockOffset | None = None  # issue 18: the agent's clock offset measured on this batch


def granted_bytes(max_bytes: int | None, omit_seconds: float, duration_seconds: float,
                  timeout_seconds: float) -> int:
    """The bytes one direction of a granted HTTP test may move: the grant's cap, else what 1 Gbit/s moves
    in the test's bound.

    One definition for both ends: the agent asks for this much, and the centre serves and accepts
    no more under the slot (issue 24: a 1 MB grant had served 50 MB), so a metered site's budget
    and the centre's uplink are spent only as the plan allows.
    """
    if max_bytes is not None:
        return min(max_bytes, MAX_TEST_BYTES)
    bound = omit_seconds + duration_seconds + timeout_seconds
    return min(math.ceil(UNCAPPED_BITS_PER_SECOND / 8 * bound), MAX_TEST_BYTES)


# ---------------------------------------------------------------------------------------- encoding (agent)
def _reason(error: ProbeErrorReason | None) -> str | None:
    return None if error is None else error.value


def encode_icmp(seq: int, result: IcmpResult, path: IcmpPath = "centre") -> dict[str, Any]:
    return {"seq": seq, "type": "icmp", "path": path, "started_at": result.started_at, "address": result.address,
            "sent": result.sent, "rtts_seconds": list(result.rtts_seconds), "error": _reason(result.error),
            "error_detail": clean_detail(result.error_detail, MAX_TEXT)}


def encode_direction(d: DirectionResult) -> dict[str, Any]:
    """A direction on the wire; with its latency-under-load samples (issue 20) when it has any.

    The samples' keys (:data:`LATENCY_FIELDS`) are unknown to a centre from before issue 20, which
    refuses them: the uploader leaves them out until the centre has shown it is newer.
    """
    return {**d.as_json(clean_detail(d.error_detail, MAX_TEXT)), **d.latency_json()}


def encode_throughput(seq: int, result: ThroughputResult, slot: str | None = None) -> dict[str, Any]:
    return {"seq": seq, "type": "throughput", "method": result.method, "slot": slot,
            "started_at": result.started_at, "ended_at": result.ended_at, "address": result.address,
            "directions": [encode_direction(d) for d in result.directions], "error": _reason(result.error),
            "error_detail": clean_detail(result.error_detail, MAX_TEXT)}


def encode_agent(info: AgentInfo) -> dict[str, Any]:
    """The ``agent`` block; the issue 18 fields only when set (the uploader sets them for a centre that reads them)."""
    block: dict[str, Any] = {"version": info.version, "instance": info.instance, "boot_id": info.boot_id,
                             "uptime_seconds": info.uptime_seconds, "sent_at": info.sent_at,
                             "spool_dropped": info.spool_dropped}
    if info.round_trip_seconds is not None:
        block["round_trip_seconds"] = round(info.round_trip_seconds, 6)
    if info.spool_depth is not None:
        block["spool_depth"] = info.spool_depth
    return block


# ---------------------------------------------------------------------------------------- decoding (centre)
