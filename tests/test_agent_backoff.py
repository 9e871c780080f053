"""The agent's retries (issue 25, point 6): back off with jitter after a failure, honour Retry-After, and
never drop a refused batch within minutes (its cause may pass: a fast clock being corrected).

The uploader is driven with a real spool (SQLite in a temporary directory) and a stand-in for the
centre's client that answers what the test says; time is the test's clock. What a real centre
answers is tested end to end in ``tests/test_agents.py`` and ``tests/test_agent_edge.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monitor.agent.protocol import AgentInfo
from monitor.agent.site.client import Answer, CentreClient, CentreUnreachable
from monitor.agent.site.config import AgentConfig
from monitor.agent.site.spool import Spool
from monitor.agent.site.upload import (
    BACKOFF_FIRST_SECONDS,
    BACKOFF_MAX_SECONDS,
    MAX_REFUSALS,
    REFUSAL_PATIENCE_SECONDS,
    Uploader,
)
from tests.factories import Clock


class Centre:
    """Answers each post with the next of ``answers`` (an Answer, or an exception to raise); counts posts."""

    def __init__(self, *answers: Answer | Exception) -> None:
        self.answers = list(answers)
        self.posts = 0

    async def post(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Answer:
        self.posts += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool.open(tmp_path)
    for _ in range(5):
        s.append(lambda seq: {"type": "icmp", "seq": seq})
    yield s
    s.close()


def uploader(spool: Spool, centre: Centre, clock: Clock, jitter: float = 0.5) -> Uploader:
    config = AgentConfig(source="agent.yaml", centre="https://centre.test", site="s", token_file=Path("t"))
    info = AgentInfo.__new__(AgentInfo)  # the body's agent block is not looked at by the stand-in
    up = Uploader(config, spool, centre, lambda: info, clock, jitter=lambda: jitter)  # type: ignore[arg-type]
    up.batch = 5
    return up


def drain(up: Uploader) -> str:
    return asyncio.run(up.drain()).stopped_by


def test_failures_back_off_doubling_to_the_cap_and_a_success_resets(spool: Spool,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("monitor.agent.site.upload.encode_agent", lambda info: {})
    clock = Clock(1000.0)
    centre = Centre(Answer(503, "busy"))
    up = uploader(spool, centre, clock)
    waits = []
    for _ in range(10):
        assert drain(up) == "HTTP 503"
        waits.append(up.not_before - clock.now)
        assert drain(up).startswith("waiting")  # not before the wait is over: no post
        clock.now = up.not_before
    assert centre.posts == 10
    assert waits == [min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** k) for k in range(10)]
    centre.answers = [Answer(200, {"accepted": 5, "duplicates": 0})]
    assert drain(up) == "" and up.failures == 0 and len(spool) == 0


def test_the_wait_is_jittered_and_never_shorter_than_retry_after(spool: Spool,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("monitor.agent.site.upload.encode_agent", lambda info: {})
    clock = Clock(1000.0)
    low, high = uploader(spool, Centre(Answer(503, "x")), clock, 0.0), uploader(spool, Centre(Answer(503, "x")),
                                                                                clock, 0.999)
    drain(low), drain(high)
    assert (low.not_before - clock.now, round(high.not_before - clock.now, 2)) == (
        BACKOFF_FIRST_SECONDS * 0.5, round(BACKOFF_FIRST_SECONDS * 1.499, 2))
    told = uploader(spool, Centre(Answer(429, "slow down", retry_after_seconds=120.0)), clock)
    assert drain(told) == "HTTP 429" and told.not_before - clock.now == 120.0
    gone = uploader(spool, Centre(CentreUnreachable("connection refused")), clock)
    assert drain(gone) == "unreachable" and gone.not_before - clock.now == BACKOFF_FIRST_SECONDS


def test_a_refused_batch_is_kept_for_minutes_whatever_the_count(spool: Spool,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused MAX_REFUSALS times within a minute: kept. Still refused after REFUSAL_PATIENCE_SECONDS: dropped."""
    monkeypatch.setattr("monitor.agent.site.upload.encode_agent", lambda info: {})
    clock = Clock(1000.0)
    centre = Centre(Answer(400, {"error": "$.results[0].at: in the future"}))
    up = uploader(spool, centre, clock)
    for _ in range(MAX_REFUSALS + 2):
        assert drain(up) == "HTTP 400"
        clock.now = up.not_before
    assert len(spool) == 5 and clock.now - 1000.0 < REFUSAL_PATIENCE_SECONDS
    clock.now = 1000.0 + REFUSAL_PATIENCE_SECONDS
    report = asyncio.run(up.drain())
    assert report.dropped == 5 and len(spool) == 0


def test_an_envelope_refusal_never_drops(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("monitor.agent.site.upload.encode_agent", lambda info: {})
    clock = Clock(1000.0)
    up = uploader(spool, Centre(Answer(400, {"error": "$.agent.sent_at: the agent's clock is 2 h fast"})), clock)
    for _ in range(MAX_REFUSALS + 1):
        drain(up)
        clock.now = up.not_before + REFUSAL_PATIENCE_SECONDS
    assert len(spool) == 5


def test_the_client_type_is_what_the_uploader_takes() -> None:
    """The stand-in has the one method the uploader calls on a real client."""
    assert callable(CentreClient.post) and callable(Centre.post)
