"""Enrolment codes (issue 18): a one-time code a technician types at the site, traded once for the site's token.

A site's agent needs a token the centre knows. Instead of making one by hand and pasting its hash
into the centre's YAML, the centre prints a code (``connmon agent-invite SITE``) and the
technician types it at the site (``connmon agent enrol --centre URL --code CODE``):

* **The code.** 12 characters of Crockford's base 32 (digits and letters without I, L, O, U),
  printed in groups of four: ``K7QF-M2XD-9PZA``. 60 random bits; typed in either case, with or
  without the dashes, and the look-alikes O, I and L read as 0, 1 and 1. It binds the site: the
  technician types no site name.
* **Kept as a hash**, like the token: the store holds SHA-256 of the code's normalised form
  (:mod:`monitor.history.agent_tokens`). A code expires (24 h by default) and is taken once; a
  new invite for a site ends its earlier open code.
* **One answer for every wrong code**: unknown, used and expired codes get the same status and
  text (:data:`WRONG_CODE`), so an answer tells nothing about which codes exist.
* **Guessing is hopeless.** Wrong codes are limited per client address (:data:`PER_ADDRESS`:
  10 at once, then one a minute; an IPv6 client by its /64) and over all (:data:`OVERALL`: 100 at
  once, then one every 6 s, some 14,400 a day). Against 2^60 codes, even a thousand open codes at
  once leave a day's guesses a chance of about 10^-11. Over the limit the answer is 429 with
  ``Retry-After``, before the code is looked at. A code spends from both buckets before it is looked
  at (concurrent codes cannot all pass on one token), and a right one gets its tokens back.
* **No lock-out by flood.** A client whose own bucket is full (no wrong code lately) is looked at
  even when the overall bucket is empty, so wrong codes from elsewhere cannot keep a technician
  out; each address or /64 gains at most one look a minute by it (10,000 addresses: about 10^-8 a
  day against a thousand open codes).
* **Refusals** are counted (``connmon_agent_enrolments_refused_total{reason}``) and logged
  at most once a minute; they are not agent requests refused for a token
  (``connmon_agent_requests_rejected_total``), so a technician's typo does not raise the alert on those.
* **The token** is 32 random bytes (as ``connmon agent-token`` makes), sent once in the answer
  and kept as its hash; the registry takes it at once (:meth:`AgentRegistry.set_stored_token`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from monitor.agent.centre.registry import AgentRegistry, TokenBucket, token_hash
from monitor.exposition.families import ShardLabels, label_pairs
from monitor.exposition.scrape import Labelled
from monitor.history.agent_tokens import TokenBook

log = logging.getLogger(__name__)

TOKEN_REFRESH_SECONDS = 5.0  # how often the daemon reads the enrolled tokens: a revoke takes effect within it
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford's base 32
CODE_LENGTH = 12
GROUP = 4
# what the API document allows (monitor/web/openapi.yaml): three groups of four letters or digits,
# dashes or spaces between them optional; matched as JSON Schema's validator (Python's re) does
CODE_PATTERN = "^[0-9A-Za-z]{4}[- ]?[0-9A-Za-z]{4}[- ]?[0-9A-Za-z]{4}$"
_CODE = re.compile(CODE_PATTERN)
_LOOK_ALIKES = str.maketrans({"O": "0", "I": "1", "L": "1"})
DEFAULT_EXPIRES_SECONDS = 86400.0
WRONG_CODE = ("this enrolment code is not valid: it may be mistyped, used already or expired; ask the centre "
              "for a new one (connmon agent-invite)")
REFUSAL_REASONS = ("code", "rate_limited")
REFUSAL_LOG_SECONDS = 60.0  # a refusal is logged at most once a minute: guessing is counted, not a log flood


@dataclass(frozen=True, slots=True)
class Limit:
    """A token bucket's shape: ``burst`` wrong codes at once, refilled at ``per_second``."""

    burst: float
    per_second: float


PER_ADDRESS = Limit(10, 1 / 60)
OVERALL = Limit(100, 1 / 6)
MAX_ADDRESSES = 10_000  # client addresses remembered at once; beyond, the fullest buckets are forgotten


def new_code() -> str:
    """A fresh code, grouped for reading aloud and typing: ``K7QF-M2XD-9PZA``."""
    raw = "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))
    return "-".join(raw[i:i + GROUP] for i in range(0, CODE_LENGTH, GROUP))


def normalise(code: str) -> str:
    """The code as hashed: no dashes or spaces, upper case, look-alikes read as digits."""
    return "".join(code.split()).replace("-", "").upper().translate(_LOOK_ALIKES)


def is_code(text: str) -> bool:
    """Whether ``text`` has a code's form (the API document's pattern); a wrong code may still have it."""
    return _CODE.match(text) is not None


def code_hash(code: str) -> str:
    """What the store keeps of a code: SHA-256 of its normalised form."""
    return hashlib.sha256(normalise(code).encode("ascii", "replace")).hexdigest()


@dataclass(frozen=True, slots=True)
class Enrolled:
    """A code taken: the site it was for and its new token (sent once, never kept)."""

    site: str
    token: str


@dataclass(frozen=True, slots=True)
class Refused:
    """A code not taken: 403 for a wrong one (:data:`WRONG_CODE`), 429 over the rate (``retry_after_seconds``)."""

    status: int
    message: str
    retry_after_seconds: float = 0.0


@dataclass(slots=True)
class EnrolmentCounts:
    """What ``/metrics`` shows of enrolments: codes taken, and refusals by reason."""

    enrolled: int = 0
    refused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REFUSAL_REASONS, 0))


def _left(bucket: TokenBucket, now: float) -> float:
    """The tokens ``bucket`` holds at ``now``, without spending any."""
    return min(bucket.capacity, bucket.tokens + max(0.0, now - bucket.at) * bucket.rate)


def _left_wait(bucket: TokenBucket, now: float) -> float:
    """Seconds until ``bucket`` holds a whole token (0: it does now)."""
    left = _left(bucket, now)
    return 0.0 if left >= 1.0 else (1.0 - left) / bucket.rate


def _give_back(spent: list[TokenBucket]) -> None:
    """Return the token each bucket in ``spent`` gave for a code that turned out right (or was never looked at)."""
    for bucket in spent:
        bucket.tokens = min(bucket.capacity, bucket.tokens + 1.0)


def client_key(address: str) -> str:
    """Whose bucket a client address spends: the address itself, an IPv6 one by its /64.

    One host is commonly given a whole IPv6 /64; counted by address it could start afresh with each
    new one. An IPv4-mapped IPv6 address counts as its IPv4 address.
    """
    try:
        parsed = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)


class Enrolment:
    """Trades codes for tokens through the store, within the rates; lives on the daemon's event loop.

    Args:
        open_book: opens the store's token tables (called in a worker thread, once, then kept).
        registry: told the new token at once, so the agent's first upload is taken.
        clock: Unix time (injected in tests).
    """

    def __init__(self, open_book: Callable[[], TokenBook], registry: AgentRegistry, clock: Callable[[], float],
                 counts: EnrolmentCounts | None = None, per_address: Limit = PER_ADDRESS,
                 overall: Limit = OVERALL) -> None:
        self._open_book, self.registry, self.clock = open_book, registry, clock
        self._book: TokenBook | None = None
        self._per_address_limit, self._overall_limit = per_address, overall
        self._overall = TokenBucket(overall.burst, overall.per_second, overall.burst)
        self._addresses: dict[str, TokenBucket] = {}
        self._lock = asyncio.Lock()  # one store operation at a time on the one connection
        self.counts = counts if counts is not None else EnrolmentCounts()  # read by /metrics
        self._said_at = -REFUSAL_LOG_SECONDS  # when a refusal was last logged; those since are counted, not logged
        self._unsaid = 0

    def _bucket(self, address: str) -> TokenBucket:
        address = client_key(address)
        bucket = self._addresses.get(address)
        if bucket is None:
            if len(self._addresses) >= MAX_ADDRESSES:  # forget the ones that have refilled the most
                now = self.clock()
                for known, _bucket in sorted(self._addresses.items(),
                                         key=lambda kv: kv[1].tokens + (now - kv[1].at) * kv[1].rate)[
                                             MAX_ADDRESSES // 2:]:
                    del self._addresses[known]
            limit = self._per_address_limit
            bucket = self._addresses[address] = TokenBucket(limit.burst, limit.per_second, limit.burst)
        return bucket

    def _spend(self, address: str, now: float) -> tuple[float, list[TokenBucket]]:
        """Spend for one code before it is looked at: (0, the buckets spent), or (seconds to wait, nothing).

        Synchronous, before any ``await``: concurrent codes each see the tokens the ones before them
        spent, so no more are looked at than the buckets hold. An address whose own bucket is full (no
        wrong code from it lately) is not refused by the overall bucket: a flood from elsewhere that keeps
        the overall bucket empty does not lock a technician out (docs/agents.md); its own bucket is spent
        all the same, so each address or IPv6 /64 gains at most one code a minute from this.
        """
        own = self._bucket(address)
        own_left = _left(own, now)
        own_wait, overall_wait = _left_wait(own, now), _left_wait(self._overall, now)
        if own_wait > 0:
            return max(own_wait, overall_wait), []
        if overall_wait > 0 and own_left < own.capacity:  # until the overall refills, or its own is full again
            return min(overall_wait, (own.capacity - own_left) / own.rate), []
        own.take(now)
        if overall_wait > 0:
            return 0.0, [own]
        self._overall.take(now)
        return 0.0, [own, self._overall]

    async def enrol(self, code: str, address: str) -> Enrolled | Refused:
        """Take ``code`` (already of a code's form) for the client at ``address``.

        Raises:
            OSError, sqlite3.Error, psycopg.Error: the store cannot be used now (the route answers 503).
        """
        now = self.clock()
        wait, spent = self._spend(address, now)
        if wait > 0:
            self.counts.refused["rate_limited"] += 1
            self._say(f"enrolment from {address} refused: too many wrong codes (HTTP 429)", now)
            return Refused(429, "too many wrong enrolment codes; try again later", wait)
        token = secrets.token_urlsafe(32)
        try:
            async with self._lock:
                site = await asyncio.to_thread(self._redeem, code_hash(code), token_hash(token), now)
        except BaseException:
            _give_back(spent)  # not looked at (the store failed): no guess was made
            raise
        if site is None:
            self.counts.refused["code"] += 1
            self._say(f"enrolment from {address} refused: a wrong, used or expired code (HTTP 403)", now)
            return Refused(403, WRONG_CODE)
        _give_back(spent)  # only wrong codes spend: a technician's right code is no guess
        self.registry.set_stored_token(site, token_hash(token))
        self.counts.enrolled += 1
        return Enrolled(site, token)

    def _say(self, line: str, now: float) -> None:
        """Log a refusal at most once every :data:`REFUSAL_LOG_SECONDS`, with how many went unlogged since."""
        if now - self._said_at < REFUSAL_LOG_SECONDS:
            self._unsaid += 1
            return
        more = f" ({self._unsaid} more refusals in the last {now - self._said_at:.0f}s)" if self._unsaid else ""
        self._said_at, self._unsaid = now, 0
        log.warning("%s%s", line, more)

    def _redeem(self, code_sha256: str, token_sha256: str, now: float) -> str | None:
        if self._book is None:
            self._book = self._open_book()
        try:
            return self._book.redeem(code_sha256, token_sha256, now)
        except BaseException:
            book, self._book = self._book, None  # opened again next time (a PostgreSQL restart)
            book.close()
            raise

    def close(self) -> None:
        if self._book is not None:
            self._book.close()
            self._book = None


async def keep_tokens(registry: AgentRegistry, open_book: Callable[[], TokenBook],
                      every_seconds: float = TOKEN_REFRESH_SECONDS) -> None:
    """Read the enrolled tokens from the store at once, then every ``every_seconds``, into ``registry``.

    A revoke (``connmon agent-revoke``, another process) therefore ends a token within
    ``every_seconds``; an enrolment in another instance of a shared store is taken as fast. When the
    store cannot be read, the registry keeps the tokens it has (said once per outage).
    """
    book: TokenBook | None = None
    failed = False
    try:
        while True:
            try:
                if book is None:
                    book = await asyncio.to_thread(open_book)
                edits = registry.stored_edits
                tokens = await asyncio.to_thread(book.tokens)
                if registry.stored_edits == edits:  # else a token was issued meanwhile: the next read has it
                    registry.set_stored_tokens(tokens)
                if failed:
                    log.warning("enrolment: the enrolled agents' tokens are read from the store again")
                failed = False
            except Exception as err:
                if not failed:
                    log.warning("enrolment: cannot read the enrolled agents' tokens from the store (%s); the ones "
                                "read before stay valid", type(err).__name__)
                failed = True
                if book is not None:
                    with contextlib.suppress(Exception):
                        book.close()
                    book = None
            await asyncio.sleep(every_seconds)
    finally:
        if book is not None:
            book.close()


class EnrolmentExposition:
    """Renders the enrolment counters at each scrape.

    ::

        connmon_agent_enrolments_total 3
        connmon_agent_enrolments_refused_total{reason="code"} 2
        connmon_agent_enrolments_refused_total{reason="rate_limited"} 0
    """

    def __init__(self, counts: EnrolmentCounts) -> None:
        self._counts = counts

    def render(self, shard: ShardLabels, endpoints: Mapping[str, Labelled]) -> bytes:
        counts = self._counts
        lines = ["# HELP connmon_agent_enrolments_total Enrolment codes traded for an agent token (issue 18).\n",
                 "# TYPE connmon_agent_enrolments_total counter\n",
                 f"connmon_agent_enrolments_total{shard.braces('')} {counts.enrolled}\n",
                 "# HELP connmon_agent_enrolments_refused_total Enrolments refused: a wrong, used or expired code "
                 "(code), or too many wrong codes (rate_limited).\n",
                 "# TYPE connmon_agent_enrolments_refused_total counter\n"]
        lines.extend(f"connmon_agent_enrolments_refused_total{shard.braces(label_pairs((('reason', reason),)))} "
                     f"{count}\n" for reason, count in counts.refused.items())
        return "".join(lines).encode("utf-8")
