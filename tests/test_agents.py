"""The centre's agent bookkeeping (issue 10), with a pinned clock: sequence numbers, silence, gap causes, slots."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from monitor.agent.centre.registry import AgentRegistry, TokenBucket
from monitor.agent.decode import decode_batch
from monitor.agent.protocol import ProtocolError, encode_agent, encode_icmp, encode_throughput
from monitor.config import Retention
from monitor.errors import ProbeErrorReason
from monitor.history.sqlite import SqliteStore
from monitor.history.store import StoredGap
from monitor.history.writer import HistorySink
from monitor.pipeline import ResultPipeline
from monitor.results import DirectionResult, IcmpResult, ThroughputResult
from monitor.throughput_plan import ThroughputPlan
from tests.factories import Clock, Recorder, agent_target, agent_token

T0 = 1_790_000_000.0
TOKENS = {name: agent_token(name) for name in ("vsat-1", "vsat-2")}


def batch(site: str, seqs: list[int], at: float, *, boot: str = "boot-1", uptime: float = 10_000.0,
          instance: str = "inst-1", spacing: float = 60.0) -> dict[str, Any]:
    placeholder = agent_target(site)
    results = [encode_icmp(seq, IcmpResult(placeholder, at + i * spacing, "10.77.0.1", 3, (0.6, None, 0.61)))
               for i, seq in enumerate(seqs)]
    from monitor.agent.protocol import AgentInfo
    info = AgentInfo("0.1.0", instance, boot, uptime, at + len(seqs) * spacing)
    return {"site": site, "agent": encode_agent(info), "results": results}


@pytest.fixture
def world() -> tuple[AgentRegistry, Recorder, Clock]:
    clock, sink = Clock(T0), Recorder()
    registry = AgentRegistry(ResultPipeline([sink]), clock)
    registry.set_targets([agent_target("vsat-1"), agent_target("vsat-2")])
    return registry, sink, clock


def post(registry: AgentRegistry, token: str, body: dict[str, Any], *, stored: bool = True) -> Any:
    """What the API does with a batch; ``stored``: the history then holds it, and the journal is told (issue 25)."""
    site = registry.authenticate(f"Bearer {token}")
    assert site is not None
    outcome = registry.accept(site, decode_batch(body, registry.clock()))
    if stored:
        registry.confirm(site)
    return outcome


def test_a_token_speaks_for_its_own_site_only(world: tuple[AgentRegistry, Recorder, Clock]) -> None:
    registry, _, _ = world
    site = registry.authenticate(f"Bearer {TOKENS['vsat-2']}")
    assert site is not None and site.target.name == "vsat-2"
    assert registry.authenticate(f"bearer   {TOKENS['vsat-1']}  ") is not None  # surrounding blanks do not matter
    for header in (None, "", "Bearer", "Bearer ", f"Basic {TOKENS['vsat-1']}", "Bearer nope"):
        assert registry.authenticate(header) is None


def test_results_enter_the_pipeline_with_the_centres_labels_once(world: tuple[AgentRegistry, Recorder, Clock]) -> None:
    registry, sink, clock = world
    clock.now = T0 + 200
    outcome = post(registry, TOKENS["vsat-1"], batch("vsat-1", [1, 2], T0))
    assert (outcome.accepted, outcome.duplicates, outcome.last_seq) == (2, 0, 2)
    assert [r.target.name for r in sink.results] == ["vsat-1", "vsat-1"]
    assert [r.started_at for r in sink.results] == [T0, T0 + 60]  # the agent's times, not the arrival's
    assert sink.results[0].target.district == "Shalkar" and sink.results[0].rtts_seconds == (0.6, None, 0.61)
    assert {c.probe for c in sink.cycles} == {"agent"}
    # the answer was lost, the agent sends the same and one more: only the new one counts
    again = post(registry, TOKENS["vsat-1"], batch("vsat-1", [1, 2, 3], T0))
    assert (again.accepted, again.duplicates, again.last_seq) == (1, 2, 3)
    assert len(sink.results) == 3
    # a reinstalled agent (new instance) numbers from 1 again and is not ignored
    fresh = post(registry, TOKENS["vsat-1"], batch("vsat-1", [1], T0 + 300, instance="inst-2"))
    assert (fresh.accepted, fresh.duplicates) == (1, 0)


def test_silence_marks_down_and_the_gap_is_classified_link_power_or_unknown(
        world: tuple[AgentRegistry, Recorder, Clock]) -> None:
    registry, sink, clock = world
    clock.now = T0 + 10
    post(registry, TOKENS["vsat-1"], batch("vsat-1", [1], T0))
    post(registry, TOKENS["vsat-2"], batch("vsat-2", [1], T0))
    clock.now = T0 + 10 + 180  # exactly stale_after (3 × 60 s): not yet
    assert registry.check_silence() == []
    clock.now += 1
    assert sorted(registry.check_silence()) == ["vsat-1", "vsat-2"]
    assert registry.check_silence() == []  # marked once, not at every check
    silent = [r for r in sink.results if r.error is ProbeErrorReason.AGENT_SILENT]
    assert len(silent) == 2 and not any(r.up for r in silent)
    assert registry.sites["vsat-1"].gap_cause == "unknown"
    # vsat-1: the same boot, and results measured during the gap arrive from its spool: the link was cut
    clock.now = T0 + 1000
    outcome = post(registry, TOKENS["vsat-1"], batch("vsat-1", [2, 3, 4], T0 + 60))
    assert outcome.gap_cause == "link" and registry.sites["vsat-1"].gaps == {"link": 1, "power": 0, "unknown": 0}
    assert not registry.sites["vsat-1"].silent
    # vsat-2: a new boot younger than the gap: the power went
    outcome = post(registry, TOKENS["vsat-2"], batch("vsat-2", [2], T0 + 950, boot="boot-2", uptime=40.0))
    assert outcome.gap_cause == "power"
    # silent again; back with the same boot and nothing measured in the gap: unknown
    clock.now = T0 + 2000
    registry.check_silence()
    clock.now = T0 + 2100  # what it measured is from after the centre gave up on it: no proof of a link cut
    outcome = post(registry, TOKENS["vsat-2"], batch("vsat-2", [3], T0 + 2050, boot="boot-2", uptime=1150.0))
    assert outcome.gap_cause == "unknown"
    assert registry.sites["vsat-2"].gaps == {"link": 0, "power": 1, "unknown": 1}
    # a silence goes down the pipeline as a provisional unknown gap when marked; each classified gap with the
    # batch that ended it, spans as the module doc says, replacing the provisional one
    gaps = [(g.target.name, g.started_at, g.ended_at, g.cause, g.replaces_start)
            for c in sink.cycles for g in c.gaps]
    assert gaps == [("vsat-1", T0 + 10, T0 + 191, "unknown", None), ("vsat-2", T0 + 10, T0 + 191, "unknown", None),
                    ("vsat-1", T0 + 10, T0 + 1000, "link", None),  # from the last post to the one that ended it
                    # to the boot (now − uptime = T0 + 960), from its last result measured before the boot
                    ("vsat-2", T0 + 950, T0 + 960, "power", T0 + 10),
                    ("vsat-1", T0 + 1000, T0 + 2000, "unknown", None),  # both silent again: vsat-1 still is
                    ("vsat-2", T0 + 1000, T0 + 2000, "unknown", None),
                    ("vsat-2", T0 + 1000, T0 + 2100, "unknown", None)]
    assert all(g.interval_seconds == 60.0 for c in sink.cycles for g in c.gaps)


def test_a_long_silence_is_a_growing_unknown_gap_until_the_agent_tells(
        world: tuple[AgentRegistry, Recorder, Clock]) -> None:
    """While silent, the provisional gap is published again once a minute (not at every check), up to now."""
    registry, sink, clock = world
    clock.now = T0 + 10
    post(registry, TOKENS["vsat-1"], batch("vsat-1", [1], T0))
    post(registry, TOKENS["vsat-2"], batch("vsat-2", [1], T0))
    clock.now = T0 + 200
    registry.check_silence()
    for second in range(1, 130):
        clock.now = T0 + 200 + second
        registry.check_silence()
    spans = [(g.started_at, g.ended_at) for c in sink.cycles for g in c.gaps if g.target.name == "vsat-1"]
    assert spans == [(T0 + 10, T0 + 200), (T0 + 10, T0 + 260), (T0 + 10, T0 + 320)]
    assert all(not c.results for c in sink.cycles[-2:])  # a refresh carries no result: nothing for the metrics


def test_a_power_gap_reaches_the_history_store_through_the_pipeline(tmp_path: Path) -> None:
    """The registry, the one pipeline and the real history writer over a SQLite file: a site that lost power is
    stored as a power gap from its last sign of life (a spooled result from before the boot) to the boot; a
    link gap from the last post to the one that ended it; the silence itself is never a row."""
    clock = Clock(T0)
    path = tmp_path / "history.sqlite3"
    sink = HistorySink(lambda: SqliteStore(path), Retention(), clock)
    registry = AgentRegistry(ResultPipeline([sink]), clock)
    registry.set_targets([agent_target("vsat-1"), agent_target("vsat-2")])
    post(registry, TOKENS["vsat-1"], batch("vsat-1", [1, 2], T0 - 120))
    post(registry, TOKENS["vsat-2"], batch("vsat-2", [1], T0 - 60))
    clock.now = T0 + 600
    assert sorted(registry.check_silence()) == ["vsat-1", "vsat-2"]
    clock.now = T0 + 1000
    # vsat-1 booted at T0 + 700 (uptime 300); its spool held one result from before the cut (T0 + 30) and one after
    rebooted = batch("vsat-1", [3, 4], T0 + 30, boot="boot-2", uptime=300.0, spacing=720.0)
    rebooted["agent"]["sent_at"] = T0 + 1000
    assert post(registry, TOKENS["vsat-1"], rebooted).gap_cause == "power"
    assert post(registry, TOKENS["vsat-2"], batch("vsat-2", [2, 3], T0 + 60)).gap_cause == "link"
    clock.now = T0 + 1500  # both silent again, and still at the next refresh: the history has the silence so far
    assert sorted(registry.check_silence()) == ["vsat-1", "vsat-2"]
    clock.now = T0 + 1600
    registry.check_silence()
    sink.close()
    store = SqliteStore(path, read_only=True)
    try:  # the classified gaps replaced the provisional ones (the power gap's under another start)
        assert store.gaps("vsat-1", 0, 2e9) == [StoredGap("vsat-1", T0 + 30, T0 + 700, "power", 60.0),
                                                StoredGap("vsat-1", T0 + 1000, T0 + 1600, "unknown", 60.0)]
        assert store.gaps("vsat-2", 0, 2e9) == [StoredGap("vsat-2", T0, T0 + 1000, "link", 60.0),
                                                StoredGap("vsat-2", T0 + 1000, T0 + 1600, "unknown", 60.0)]
        assert [c.started_at for c in store.icmp_cycles("vsat-1", 0, 2e9)] == [T0 - 120, T0 - 60, T0 + 30, T0 + 750]
        assert all(c.error != "agent_silent" for n in ("vsat-1", "vsat-2") for c in store.icmp_cycles(n, 0, 2e9))
    finally:
        store.close()
    # the results, and every gap published (a row each, same backlog): 2 provisional, 2 classified, 2 + 2 more
    assert sink.stats.written == 2 + 1 + 2 + 2 + 8
    assert sink.stats.pending == 0 and sink.stats.dropped == 0


def test_a_reload_keeps_sequence_and_liveness_and_forgets_removed_sites(
        world: tuple[AgentRegistry, Recorder, Clock]) -> None:
    registry, _, clock = world
    clock.now = T0 + 100
    post(registry, TOKENS["vsat-1"], batch("vsat-1", [5], T0))
    registry.set_targets([dataclasses.replace(agent_target("vsat-1"), district="Aktobe")])
    assert registry.sites["vsat-1"].last_seq == 5 and registry.sites["vsat-1"].target.district == "Aktobe"
    assert registry.authenticate(f"Bearer {TOKENS['vsat-2']}") is None


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda b: b["results"][0].update(rtts_seconds=[0.5, -1.0, 0.1]), "$.results[0].rtts_seconds[1]"),
    (lambda b: b["results"][0].update(started_at=T0 + 10_000), "$.results[0].started_at"),
    (lambda b: b["results"][0].update(sent=1), "$.results[0].rtts_seconds"),
    (lambda b: b["results"][0].update(error="on_fire"), "$.results[0].error"),
    (lambda b: b["results"][0].update(extra=1), "$.results[0].extra"),
    (lambda b: b["results"].append(dict(b["results"][0])), "$.results[1].seq"),
    (lambda b: b["results"][0].update(type="dns"), "$.results[0].type"),
    (lambda b: b["agent"].update(sent_at=float("inf")), "$.agent.sent_at"),
    (lambda b: b["agent"].pop("boot_id"), "$.agent.boot_id"),
    (lambda b: b.update(site=7), "$.site"),
    (lambda b: b["results"][0].update(seq=True), "$.results[0].seq"),
])
def test_a_bad_value_rejects_the_whole_batch_naming_it(mutate: Any, field: str) -> None:
    body = batch("vsat-1", [1], T0)
    mutate(body)
    with pytest.raises(ProtocolError) as caught:
        decode_batch(body, T0 + 100)
    assert caught.value.field == field


def test_throughput_results_round_trip_with_their_directions() -> None:
    t = agent_target("vsat-1")
    test = ThroughputResult(t, "http", T0, T0 + 25, "10.77.0.1", (
        DirectionResult("download", T0, T0 + 12, 7.9e6, 10_400_000, 10.0, 3),
        DirectionResult("upload", T0 + 13, T0 + 25, None, 0, 0.0, None, ProbeErrorReason.TIMEOUT, "stalled")))
    body = {"site": "vsat-1", "agent": batch("vsat-1", [], T0)["agent"], "results": [encode_throughput(9, test, "s1")]}
    decoded = decode_batch(body, T0 + 30).results[0]
    assert decoded.slot == "s1" and decoded.seq == 9
    assert dataclasses.replace(decoded.result, target=t) == test


def test_the_token_bucket_allows_bursts_then_the_rate() -> None:
    bucket = TokenBucket(capacity=3, rate=1.0, tokens=3, at=T0)
    assert [bucket.take(T0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(T0) == pytest.approx(1.0)
    assert bucket.take(T0 + 1.0) == 0.0


def test_agents_get_slots_under_the_centres_limit_and_schedule() -> None:
    """Five agents at once with max_concurrent 1: one slot; the others are told to come back later."""
    names = [f"a{i}" for i in range(5)]
    TOKENS.update({n: f"token-{n}" for n in names})
    plan = ThroughputPlan()
    targets = [agent_target(n, method="http", every_seconds=600.0, directions=("download",)) for n in names]
    plan.set_targets(targets, T0 - 600)  # every site's first test is due by T0
    grants = [plan.grant(n, T0, 1) for n in names]
    assert [g.reason for g in grants].count("granted") == 1
    assert all(g.retry_after_seconds >= 30 for g in grants if g.target is None)
    winner = next(n for n, g in zip(names, grants, strict=True) if g.target is not None)
    assert plan.due(T0, 5) == []  # the centre's own dispatcher never runs an agent site's test
    plan.finished(winner, ThroughputResult(targets[0], "http", T0, T0 + 12, None), T0 + 12)
    assert plan.grant(winner, T0 + 13, 1).reason == "not_due"
    assert sum(plan.grant(n, T0 + 13, 1).target is not None for n in names) == 1
    # an unused grant expires: the slot is free again
    holder = next(n for n in names if plan.sites[n].running)
    plan.release(holder, T0 + 100)
    assert plan.running == 0


def test_a_batch_taken_but_not_yet_stored_is_taken_again_after_a_restart(tmp_path: Path) -> None:
    """Journalled pending, never confirmed stored (the centre died before its history wrote it): a restart
    does not count it as seen, so the agent's retry is taken and stored; a confirmed one stays a duplicate."""
    from monitor.agent.centre.journal import SeqJournal

    def centre() -> tuple[AgentRegistry, Recorder]:
        sink = Recorder()
        registry = AgentRegistry(ResultPipeline([sink]), Clock(T0), journal=SeqJournal.in_dir(tmp_path))
        registry.set_targets([agent_target("vsat-1")])
        return registry, sink

    first, _ = centre()
    assert post(first, TOKENS["vsat-1"], batch("vsat-1", [1, 2], T0 - 300)).accepted == 2
    assert post(first, TOKENS["vsat-1"], batch("vsat-1", [3, 4], T0 - 200), stored=False).accepted == 2
    second, sink = centre()  # kill -9 before the history took 3 and 4
    again = post(second, TOKENS["vsat-1"], batch("vsat-1", [1, 2, 3, 4], T0 - 300))
    assert (again.accepted, again.duplicates, again.last_seq) == (2, 2, 4)
    assert [r.started_at for r in sink.results] == [T0 - 300 + 2 * 60, T0 - 300 + 3 * 60]


def test_a_batch_repeated_after_a_restart_of_the_centre_is_a_duplicate(tmp_path: Path) -> None:
    """The last sequence numbers outlive the centre (journal in the state dir): a batch the agent posts
    again after the centre restarted is acknowledged and ignored, not counted twice; a new
    installation of the agent numbers from 1 again and is taken."""
    from monitor.agent.centre.journal import SeqJournal

    def centre() -> tuple[AgentRegistry, Recorder, Clock]:
        clock, sink = Clock(T0), Recorder()
        registry = AgentRegistry(ResultPipeline([sink]), clock, journal=SeqJournal.in_dir(tmp_path))
        registry.set_targets([agent_target("vsat-1"), agent_target("vsat-2")])
        return registry, sink, clock

    first, sink, _ = centre()
    assert post(first, TOKENS["vsat-1"], batch("vsat-1", [1, 2, 3], T0 - 300)).accepted == 3
    assert post(first, TOKENS["vsat-2"], batch("vsat-2", [1, 2], T0 - 300, instance="pi-2")).accepted == 2
    assert len(sink.results) == 5
    # kill -9: nothing closed; the journal's lines are in the kernel's hands
    second, sink, _ = centre()
    again = post(second, TOKENS["vsat-1"], batch("vsat-1", [1, 2, 3], T0 - 300))
    assert (again.accepted, again.duplicates, again.last_seq) == (0, 3, 3)
    assert sink.results == [], "a repeated batch reached the sinks after the restart"
    assert post(second, TOKENS["vsat-1"], batch("vsat-1", [3, 4], T0 - 120)).accepted == 1
    assert post(second, TOKENS["vsat-2"], batch("vsat-2", [1, 2, 3], T0 - 300, instance="pi-2")).accepted == 1
    reinstalled = post(second, TOKENS["vsat-2"], batch("vsat-2", [1], T0, instance="pi-2-new"))
    assert (reinstalled.accepted, reinstalled.last_seq) == (1, 1)
    second.journal.close()  # type: ignore[union-attr]
    third, sink, _ = centre()
    assert {name: (s.instance, s.last_seq) for name, s in third.sites.items()} == {
        "vsat-1": ("inst-1", 4), "vsat-2": ("pi-2-new", 1)}
    assert len((tmp_path / "agent-sequences.jsonl").read_text().splitlines()) == 2  # compacted at start-up


def test_the_sequence_journal_survives_a_torn_line_and_compacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A line torn by a crash is skipped; many posts keep the file near one line per site; a journal that
    cannot be written refuses each record (said once in the log) until it can be written again."""
    from monitor.agent.centre import journal as agent_seqs
    from monitor.agent.centre.journal import SeqJournal

    monkeypatch.setattr(agent_seqs, "COMPACT_EXTRA_LINES", 5)
    path = tmp_path / agent_seqs.FILE_NAME
    path.write_text('{"site": "vsat-1", "instance": "inst-1", "seq": 7}\n{"site": "vsat-1", "inst', encoding="utf-8")
    journal = SeqJournal(path)
    assert journal.load() == {"vsat-1": ("inst-1", 7)}
    for seq in range(8, 40):  # as the API does: pending before publishing, confirmed once stored (issue 25)
        journal.record("vsat-1", "inst-1", seq)
        journal.confirm("vsat-1", "inst-1", seq)
    assert len(path.read_text().splitlines()) <= 1 + 5 + 2
    journal.close()
    assert SeqJournal(path).load() == {"vsat-1": ("inst-1", 39)}
    blocked = SeqJournal(tmp_path / "file-not-dir" / agent_seqs.FILE_NAME)
    (tmp_path / "file-not-dir").write_text("", encoding="utf-8")
    for seq in (1, 2):  # refused, not kept in memory only (issue 24: journal, then publish)
        with pytest.raises(agent_seqs.JournalError):
            blocked.record("vsat-1", "inst-1", seq)
    assert blocked.positions == {}
    assert sum("agent sequence journal" in r.getMessage() for r in caplog.records) == 1
    (tmp_path / "file-not-dir").unlink()
    blocked.record("vsat-1", "inst-1", 2)  # tried again with every batch: the fault cleared, it works
    assert '"pending": true' in blocked.path.read_text()  # pending only until confirmed: a restart takes it again
    blocked.confirm("vsat-1", "inst-1", 2)
    blocked.close()
    assert SeqJournal(blocked.path).load() == {"vsat-1": ("inst-1", 2)}


def test_a_batch_the_journal_cannot_record_changes_nothing_and_its_retry_is_taken_once(tmp_path: Path) -> None:
    """Journal, then publish (issue 24): with the journal unwritable the batch raises before any sink sees
    it and before the site's sequence, counters or liveness move; posted again once the journal
    works, it is taken exactly once, as a single success would have been."""
    from monitor.agent.centre.journal import JournalError, SeqJournal

    clock, sink = Clock(T0), Recorder()
    blocker = tmp_path / "state"
    blocker.write_text("", encoding="utf-8")  # a file where the state directory should be: every write fails
    registry = AgentRegistry(ResultPipeline([sink]), clock, journal=SeqJournal.in_dir(blocker))
    registry.set_targets([agent_target("vsat-1")])
    site = registry.sites["vsat-1"]
    before = (site.instance, site.last_seq, site.accepted, site.duplicates, site.info, site.last_seen)
    body = batch("vsat-1", [1, 2, 3], T0 - 300)
    with pytest.raises(JournalError):
        post(registry, TOKENS["vsat-1"], body)
    assert sink.cycles == []
    assert (site.instance, site.last_seq, site.accepted, site.duplicates, site.info, site.last_seen) == before
    blocker.unlink()
    blocker.mkdir()
    taken = post(registry, TOKENS["vsat-1"], body)
    assert (taken.accepted, taken.duplicates, taken.last_seq) == (3, 0, 3)
    again = post(registry, TOKENS["vsat-1"], body)
    assert (again.accepted, again.duplicates) == (0, 3)
    assert len(sink.results) == 3
    assert SeqJournal.in_dir(blocker).load() == {"vsat-1": ("inst-1", 3)}


def test_a_compaction_while_a_batch_is_journalled_keeps_that_batch(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The compaction that a record triggers is given the registry's figures, which do not hold the batch being
    journalled yet: the batch's own position must still be in the rewritten file."""
    from monitor.agent.centre import journal as agent_seqs
    from monitor.agent.centre.journal import SeqJournal

    monkeypatch.setattr(agent_seqs, "COMPACT_EXTRA_LINES", 0)
    registry = AgentRegistry(ResultPipeline([Recorder()]), Clock(T0), journal=SeqJournal.in_dir(tmp_path))
    registry.set_targets([agent_target("vsat-1")])
    for first in (1, 3, 5):
        post(registry, TOKENS["vsat-1"], batch("vsat-1", [first, first + 1], T0 - 300))
    assert SeqJournal.in_dir(tmp_path).load() == {"vsat-1": ("inst-1", 6)}


def test_a_refused_result_posted_again_is_refused_again_or_taken_never_called_a_duplicate(
        world: tuple[AgentRegistry, Recorder, Clock]) -> None:
    """Protocol 2: a batch is posted again after its answer was lost (or a 503 came after it was taken). A
    result refused the first time must be refused again while its cause holds (a "duplicate" would make the
    agent forget a result that was never stored) and taken, once, when it has passed."""
    registry, sink, clock = world
    clock.now = T0
    body = batch("vsat-1", [1, 2, 3], T0 - 600)
    body["results"][1]["started_at"] = T0 + 400  # 400 s ahead of the centre's clock: refused, can pass
    site = registry.authenticate(f"Bearer {TOKENS['vsat-1']}")
    assert site is not None

    def outcomes() -> list[object]:
        decoded = decode_batch(body, registry.clock(), per_result=True)
        return [line["outcome"] for line in registry.accept(site, decoded).lines]

    assert outcomes() == ["stored", "refused", "stored"]
    assert outcomes() == ["duplicate", "refused", "duplicate"]  # the answer was lost: posted again
    assert len(sink.results) == 2
    clock.now = T0 + 200  # the centre's clock has caught up with it
    assert outcomes() == ["duplicate", "stored", "duplicate"]
    assert sorted(r.started_at for r in sink.results) == [T0 - 600, T0 - 480, T0 + 400]
    assert outcomes() == ["duplicate", "duplicate", "duplicate"]  # and only once
    assert len(sink.results) == 3
