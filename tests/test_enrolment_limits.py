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
from monitor.results import ResultPipeline
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


def test_wrong_codes_are_limited_per_address_and_overall_and_a_right_code_spends_nothing(tmp_path: Path) -> None:
    """Three wrong codes from one address, then 429 for it (even with the right code) while another address may
    still try; two more wrong codes elsewhere exhaust the overall limit; time refills both."""
    clock = Clock(T0)
    registry = _registry(clock)
    enrolment = Enrolment(lambda: open_book(None, str(tmp_path)), registry, clock,
                          per_address=Limit(3, 1 / 60), overall=Limit(5, 1 / 6))

    async def run() -> None:
        right = _invite(tmp_path, "vsat-1", clock)
        for _ in range(3):
            assert await enrolment.enrol("ZZZZ-ZZZZ-ZZZZ", "192.0.2.1") == Refused(403, WRONG_CODE)
        refused = await enrolment.enrol(right, "192.0.2.1")
        assert isinstance(refused, Refused) and refused.status == 429 and refused.retry_after_seconds > 0
        for _ in range(2):
            assert await enrolment.enrol("YYYY-YYYY-YYYY", "192.0.2.2") == Refused(403, WRONG_CODE)
        refused = await enrolment.enrol(right, "192.0.2.3")  # a fresh address, but the overall limit is spent
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
