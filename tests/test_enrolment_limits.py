"""Enrolment's rates and the registry's two kinds of token (issue 18), with an injected clock and a real SQLite store.

Wrong codes are limited per client address and over all addresses; a right code spends nothing; the
limits refill with time. The registry accepts a site's YAML token and its enrolled token alike, takes a
token the route issues at once, and drops one the store no longer holds (a revoke).
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from monitor.agent.centre.enrolment import WRONG_CODE, Enrolled, Enrolment, Limit, Refused, code_hash, new_code
from monitor.agent.centre.registry import AgentRegistry, token_hash
from monitor.history.agent_tokens import open_book
from monitor.pipeline import ResultPipeline
from tests.factories import Clock, Recorder, agent_target, agent_token

T0 = 1_790_000_000.0


def _registry(clock: Clock) -> AgentRegistry:
    """vsat-yaml has a token in the YAML; vsat-1 has none (mode: agent alone: its token comes by enrolment)."""
    registry = AgentRegistry(ResultPipeline([Recorder()]), clock)
    registry.set_targets([agent_target("vsat-yaml"), dataclasses.replace(agent_target("vsat-1"), agent=None)])
    return registry


def _invite(tmp_path: Path, site: str, clock: Clock) -> str:
    code = new_code()
    book = open_book(None, str(tmp_path))
    try:
        book.invite(site, code_hash(code), clock.now, clock.now + 3600)
    finally:
        book.close()
    return code


def _enrolment(tmp_path: Path, clock: Clock) -> Enrolment:
    return Enrolment(lambda: open_book(None, str(tmp_path)), _registry(clock), clock,
                     per_address=Limit(3, 1 / 60), overall=Limit(5, 1 / 6))


def _statuses(outcomes: list[Enrolled | Refused]) -> list[int]:
    return [200 if isinstance(outcome, Enrolled) else outcome.status for outcome in outcomes]


def test_wrong_codes_are_limited_per_address_and_overall_and_a_right_code_spends_nothing(tmp_path: Path) -> None:
    """Three wrong codes from one address, then 429 for it (even with the right code) while another address may
    still try; two more wrong codes elsewhere exhaust the overall limit, which then refuses that address too;
    time refills both."""
    clock = Clock(T0)
    enrolment = _enrolment(tmp_path, clock)

    async def run() -> None:
        right = _invite(tmp_path, "vsat-1", clock)
        for _ in range(3):
            assert await enrolment.enrol("ZZZZ-ZZZZ-ZZZZ", "192.0.2.1") == Refused(403, WRONG_CODE)
        refused = await enrolment.enrol(right, "192.0.2.1")
        assert isinstance(refused, Refused) and refused.status == 429 and refused.retry_after_seconds > 0
        for _ in range(2):
            assert await enrolment.enrol("YYYY-YYYY-YYYY", "192.0.2.2") == Refused(403, WRONG_CODE)
        refused = await enrolment.enrol(right, "192.0.2.2")  # its own bucket has one left, the overall none
        assert isinstance(refused, Refused) and refused.status == 429
        clock.now += 60  # one more wrong code each for the address, ten overall
        enrolled = await enrolment.enrol(right, "192.0.2.1")
        assert isinstance(enrolled, Enrolled) and enrolled.site == "vsat-1"
        for _ in range(3):  # a right code spent nothing: the address still has its one
            another = _invite(tmp_path, "vsat-1", clock)
            assert isinstance(await enrolment.enrol(another, "192.0.2.1"), Enrolled)
        assert enrolment.counts.refused == {"code": 5, "rate_limited": 2} and enrolment.counts.enrolled == 4

    try:
        asyncio.run(run())
    finally:
        enrolment.close()


def test_concurrent_wrong_codes_are_looked_at_only_as_many_as_the_buckets_hold(tmp_path: Path) -> None:
    """Codes sent at once each spend before any is looked at: eight at once from one address get three looks
    (its bucket) and 429 for the rest; twenty more from two addresses get the overall bucket's two plus the
    second address's first try. A right code sent among wrong ones gives its token back once it is taken."""
    clock = Clock(T0)
    enrolment = _enrolment(tmp_path, clock)

    async def run() -> None:
        statuses = _statuses(await asyncio.gather(*(enrolment.enrol("ZZZZ-ZZZZ-ZZZZ", "192.0.2.1")
                                                    for _ in range(8))))
        assert sorted(statuses) == [403] * 3 + [429] * 5
        statuses = _statuses(await asyncio.gather(*(enrolment.enrol("ZZZZ-ZZZZ-ZZZZ", address)
                                                    for address in ["192.0.2.2"] * 10 + ["192.0.2.3"] * 10)))
        assert sorted(statuses) == [403] * 3 + [429] * 17
        clock.now += 3600  # every bucket full again
        right = _invite(tmp_path, "vsat-1", clock)
        outcomes = await asyncio.gather(enrolment.enrol(right, "192.0.2.4"),
                                        *(enrolment.enrol("ZZZZ-ZZZZ-ZZZZ", "192.0.2.4") for _ in range(3)))
        assert _statuses(outcomes) == [200, 403, 403, 429]  # the right code held a token while it was looked at
        assert await enrolment.enrol("ZZZZ-ZZZZ-ZZZZ", "192.0.2.4") == Refused(403, WRONG_CODE)  # given back
        assert enrolment.counts.refused == {"code": 9, "rate_limited": 23}

    try:
        asyncio.run(run())
    finally:
        enrolment.close()


def test_a_flood_that_empties_the_overall_bucket_does_not_lock_out_a_technician(tmp_path: Path) -> None:
    """Wrong codes from many addresses keep the overall bucket empty; a technician's first code from an address
    that sent no wrong one is still looked at, and after a typo it may try again once its own bucket is full
    (within a minute). Addresses of one IPv6 /64 are one client: they have no fresh first tries."""
    clock = Clock(T0)
    enrolment = _enrolment(tmp_path, clock)

    async def run() -> None:
        for host in range(1, 6):  # five addresses, one wrong code each: the overall bucket is empty
            assert await enrolment.enrol("ZZZZ-ZZZZ-ZZZZ", f"198.51.100.{host}") == Refused(403, WRONG_CODE)
        refused = await enrolment.enrol("ZZZZ-ZZZZ-ZZZZ", "198.51.100.1")
        assert isinstance(refused, Refused) and refused.status == 429
        right = _invite(tmp_path, "vsat-1", clock)
        assert isinstance(await enrolment.enrol(right, "192.0.2.9"), Enrolled)  # a technician's first try
        assert await enrolment.enrol("ZZZZ-ZZZZ-ZZZZ", "192.0.2.10") == Refused(403, WRONG_CODE)  # a typo
        right = _invite(tmp_path, "vsat-1", clock)
        refused = await enrolment.enrol(right, "192.0.2.10")
        assert isinstance(refused, Refused) and refused.status == 429 and 0 < refused.retry_after_seconds <= 60
        clock.now += refused.retry_after_seconds + 0.001
        assert isinstance(await enrolment.enrol(right, "192.0.2.10"), Enrolled)
        clock.now += 1
        for host in range(1, 6):  # keep the overall bucket empty
            await enrolment.enrol("ZZZZ-ZZZZ-ZZZZ", f"198.51.100.{host + 10}")
        assert await enrolment.enrol("ZZZZ-ZZZZ-ZZZZ", "2001:db8::1") == Refused(403, WRONG_CODE)
        refused = await enrolment.enrol("ZZZZ-ZZZZ-ZZZZ", "2001:db8::2")  # the same /64: no first try
        assert isinstance(refused, Refused) and refused.status == 429
        refused = await enrolment.enrol("ZZZZ-ZZZZ-ZZZZ", "::ffff:198.51.100.11")  # that IPv4 address, mapped
        assert isinstance(refused, Refused) and refused.status == 429

    try:
        asyncio.run(run())
    finally:
        enrolment.close()


def test_the_yaml_token_and_the_enrolled_token_are_both_accepted_and_a_revoke_ends_only_the_enrolled(
        tmp_path: Path) -> None:
    """A site with a YAML token also takes its enrolled one; a token the route issued works at once; when the
    store no longer holds it (revoked) it is refused and the YAML's stays; a stored token of a site the config
    lacks opens nothing."""
    clock = Clock(T0)
    registry = _registry(clock)
    assert set(registry.sites) == {"vsat-yaml", "vsat-1"}  # an agent site without a token is still heard for
    assert registry.authenticate(f"Bearer {agent_token('vsat-1')}") is None
    enrolment = Enrolment(lambda: open_book(None, str(tmp_path)), registry, clock)

    async def run() -> str:
        outcome = await enrolment.enrol(_invite(tmp_path, "vsat-yaml", clock), "192.0.2.1")
        assert isinstance(outcome, Enrolled)
        return outcome.token

    try:
        enrolled = asyncio.run(run())
    finally:
        enrolment.close()
    site = registry.sites["vsat-yaml"]
    assert registry.authenticate(f"Bearer {enrolled}") is site  # taken at once, before any read of the store
    assert registry.authenticate(f"Bearer {agent_token('vsat-yaml')}") is site  # and the YAML's still
    registry.set_stored_tokens({"vsat-yaml": token_hash(enrolled), "elsewhere": token_hash("stray")})
    assert registry.authenticate("Bearer stray") is None
    book = open_book(None, str(tmp_path))
    try:
        assert book.revoke("vsat-yaml").token
        registry.set_stored_tokens(book.tokens())  # what the daemon's read every few seconds does
    finally:
        book.close()
    assert registry.authenticate(f"Bearer {enrolled}") is None
    assert registry.authenticate(f"Bearer {agent_token('vsat-yaml')}") is site
    registry.set_targets([agent_target("vsat-yaml"), dataclasses.replace(agent_target("vsat-1"), agent=None)])
    assert registry.authenticate(f"Bearer {agent_token('vsat-yaml')}") is site  # a reload keeps it
