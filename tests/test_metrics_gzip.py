"""The exposition at scale: per-group blocks, gzip once per change, the shard label on every series."""

from __future__ import annotations

import asyncio
import gzip
import re
import zlib

import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitor.exposition import compression as compression
from monitor.exposition.scrape import EngineExposition
from monitor.exposition.sink import MetricsSink
from monitor.results import Cycle
from monitor.web.server import WRITE_BYTES, accepts_gzip, write_pieces
from tests.factories import SOME_TIME, icmp, located_target
from tests.promtool import promtool_problems

ENGINE = {"echoes_sent": 7, "replies_matched": 6}


def fleet(groups: int = 3, per_group: int = 40) -> list:
    return [located_target(f"g{g}-site-{i}", group=f"g{g}") for g in range(groups) for i in range(per_group)]


def cycle_of(targets: list, group: str, rtt: float = 0.001) -> Cycle:
    return Cycle("icmp", group, 0.0, 0.2,
                 tuple(icmp(t, SOME_TIME, rtt, None, rtt) for t in targets if t.group == group))


def cached_part(sink: MetricsSink) -> bytes:
    """The body without the per-scrape chunk (process collectors change between two calls)."""
    return b"".join(sink.exposition()[:-1])


def test_gzip_body_is_the_plain_body_as_one_valid_gzip_member() -> None:
    """Concatenated sync-flushed segments decompress (gzip and zlib alike) to exactly the plain text."""
    targets = fleet()
    sink = MetricsSink(scrape=[EngineExposition(lambda: ENGINE)])
    sink.set_targets(targets)
    sink.consume(cycle_of(targets, "g1"))
    packed = b"".join(asyncio.run(sink.gzip_exposition()))
    plain = gzip.decompress(packed)
    assert plain == zlib.decompress(packed, wbits=31)  # one member, CRC-32 and size checked by both
    cached = cached_part(sink)
    assert plain.startswith(cached) and plain[len(cached):].startswith(b"# HELP connmon_icmp_echoes_sent_total")
    names = {f.name for f in text_string_to_metric_families(plain.decode())}
    assert {"connmon_up", "connmon_icmp_rtt_seconds", "connmon_icmp_echoes_sent", "process_cpu_seconds"} <= names


def test_compressed_once_per_change_and_only_the_changed_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scrapes without a change reuse the compression; a cycle of one group recompresses only its blocks."""
    compressed: list[bytes] = []
    real = compression.deflate_segment

    def counting(data: bytes, level: int = compression.LEVEL) -> bytes:
        compressed.append(data)
        return real(data, level)

    monkeypatch.setattr(compression, "deflate_segment", counting)
    targets = fleet(groups=4)
    sink = MetricsSink()
    sink.set_targets(targets)

    async def scrapes(n: int) -> list[bytes]:
        bodies = await asyncio.gather(*(sink.gzip_exposition() for _ in range(n)))  # concurrent scrapers
        return [gzip.decompress(b"".join(b)) for b in bodies]

    asyncio.run(scrapes(5))
    first = len(compressed)
    assert first > 0
    asyncio.run(scrapes(3))
    assert len(compressed) == first  # no change: nothing compressed again, however many scrapes
    sink.consume(cycle_of(targets, "g2"))
    compressed.clear()
    bodies = asyncio.run(scrapes(4))
    text = b"".join(compressed)
    assert b'endpoint="g2-site-0"' in text and b'endpoint="g1-site-0"' not in text  # only g2's blocks
    assert all(body.startswith(cached_part(sink)) for body in bodies)


def test_a_scrape_renders_nothing_and_a_cycle_rejoins_only_its_group() -> None:
    """Two scrapes without a change get the very same cached objects; a cycle replaces only its group's."""
    targets = fleet()
    sink = MetricsSink()
    sink.set_targets(targets)
    before = sink.exposition()[:-1]
    again = sink.exposition()[:-1]
    assert all(a is b for a, b in zip(before, again, strict=True))
    version = sink.version
    sink.consume(cycle_of(targets, "g0"))
    assert sink.version == version + 1
    after = sink.exposition()[:-1]
    kept = {id(chunk) for chunk in before} & {id(chunk) for chunk in after}
    changed = [chunk for chunk in after if id(chunk) not in kept]
    assert changed and all(b"g1-site" not in c and b"g2-site" not in c for c in changed)
    assert any(b'endpoint="g1-site-3"' in c for c in after if id(c) in kept)


def test_shard_label_on_every_series_and_none_without_shard() -> None:
    """With a shard, every sample (monitor-wide and process ones too) has shard="I"; without, none has."""
    targets = fleet(groups=2, per_group=3)
    for shard in ("3", None):
        sink = MetricsSink(scrape=[EngineExposition(lambda: ENGINE)], shard=shard)
        sink.set_targets(targets)
        sink.consume(cycle_of(targets, "g0"))
        sink.cycle_skipped("icmp", "g1")
        sink.config_loaded(True)
        text = b"".join(sink.exposition()).decode()
        samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
        assert len(samples) > 100
        shards = {s.labels.get("shard") for s in samples}
        assert shards == {shard}, (shard, [s for s in samples if s.labels.get("shard") != shard][:3])
        assert promtool_problems(text) == []
        gz = gzip.decompress(b"".join(asyncio.run(sink.gzip_exposition()))).decode()
        assert {s.labels.get("shard") for f in text_string_to_metric_families(gz) for s in f.samples} == {shard}


def test_exposition_order_and_families_survive_reloads_that_add_and_remove_groups() -> None:
    """After a reload that adds and removes groups, each family appears once and holds every endpoint."""
    a, b = fleet(groups=2, per_group=5), [located_target(f"new-{i}", group="new") for i in range(5)]
    sink = MetricsSink()
    sink.set_targets(a)
    sink.consume(cycle_of(a, "g0"))
    sink.set_targets([t for t in a if t.group == "g0"] + b)
    sink.consume(cycle_of(b, "new"))
    sink.consume(cycle_of(a, "g1"))  # a removed group's late cycle
    text = b"".join(sink.exposition()).decode()
    families = [f.name for f in text_string_to_metric_families(text)]
    assert len(families) == len(set(families))
    ups = {s.labels["endpoint"] for f in text_string_to_metric_families(text) if f.name == "connmon_up"
           for s in f.samples}
    assert ups == {t.name for t in a if t.group == "g0"} | {t.name for t in b}
    infos = [s.labels["endpoint"] for f in text_string_to_metric_families(text) if f.name == "connmon_endpoint_info"
             for s in f.samples]
    assert len(infos) == 10


@pytest.mark.parametrize(("header", "wanted"), [
    ("gzip", True), ("gzip, deflate, br", True), ("deflate, GZIP;q=0.5", True), ("*", True),
    ("identity", False), ("", False), ("gzip;q=0", False), ("br", False)])
def test_accept_encoding(header: str, wanted: bool) -> None:
    """gzip is served when the client accepts it, and only then."""
    assert accepts_gzip(header) is wanted


def test_chunks_rest_compressed_and_both_scrapes_give_the_same_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a running loop a changed block is compressed soon after and its text let go (issue 9:
    resident memory); gzip and plain scrapes still give exactly the text rendered, and concurrent
    plain scrapers of one version share one inflation."""
    monkeypatch.setattr("monitor.exposition.body.COMPRESS_AFTER_SECONDS", 0.01)
    inflated: list[int] = []
    real = compression.inflate

    def counting(segment: compression.Segment) -> bytes:
        inflated.append(segment.size)
        return real(segment)

    monkeypatch.setattr("monitor.exposition.body.inflate", counting)
    targets = fleet(groups=3, per_group=30)

    async def main() -> None:
        sink = MetricsSink()
        sink.set_targets(targets)
        sink.consume(cycle_of(targets, "g1"))
        rendered = cached_part(sink)  # before anything was compressed: the text as rendered
        assert b'endpoint="g1-site-29"' in rendered
        for _ in range(100):
            await asyncio.sleep(0.02)
            if not sink._body._plain_outside_headers():
                break
        assert not sink._body._plain_outside_headers(), "the rendered text was never let go"
        resting = sum(len(s.deflated) for s in sink._body._segments.values())
        assert 0 < resting < len(rendered) / 5
        plains = await asyncio.gather(*(sink.plain_exposition() for _ in range(4)))
        assert all(b"".join(p[:-1]) == rendered for p in plains)
        assert len(inflated) == len(sink._body._segments), "each segment inflated once for four plain scrapers"
        gz = gzip.decompress(b"".join(await sink.gzip_exposition()))
        assert gz.startswith(rendered)
        sink.consume(cycle_of(targets, "g2", rtt=0.02))  # a new version: new text plain, old segments kept
        again = b"".join((await sink.plain_exposition())[:-1])  # a plain scrape: the new version at once
        assert b'connmon_icmp_rtt_seconds_bucket{endpoint="g2-site-0",kind="school"' in again
        assert again == cached_part(sink) and again != rendered
        # A gzip scrape while the change waits to be compressed is not held: it gets the last body.
        assert gzip.decompress(b"".join(await sink.gzip_exposition())).startswith(rendered)
        for _ in range(100):
            await asyncio.sleep(0.02)
            if not sink._body._plain_outside_headers():
                break
        assert zlib.decompress(b"".join(await sink.gzip_exposition()), wbits=31).startswith(again)

    asyncio.run(main())


def test_a_reload_that_drops_a_group_lets_its_chunks_go(monkeypatch: pytest.MonkeyPatch) -> None:
    """No chunk outlives its group: after reloads and cycles, every kept text or segment is in the body."""
    monkeypatch.setattr("monitor.exposition.body.COMPRESS_AFTER_SECONDS", 0.01)
    targets = fleet(groups=4, per_group=5)

    async def main() -> None:
        sink = MetricsSink()
        sink.set_targets(targets)
        for group in ("g0", "g1", "g2", "g3"):
            sink.consume(cycle_of(targets, group))
        await asyncio.sleep(0.1)
        await sink.gzip_exposition()
        sink.set_targets([t for t in targets if t.group in ("g0", "g3")])
        sink.consume(cycle_of(targets, "g3"))
        await asyncio.sleep(0.1)
        body = gzip.decompress(b"".join(await sink.gzip_exposition()))
        assert b"g1-site" not in body and b"g3-site-4" in body
        body = sink._body
        held = set(body._plain) | set(body._segments)
        assert held <= set(body._order), f"chunks kept outside the body: {sorted(held - set(body._order))}"

    asyncio.run(main())


def test_one_sites_result_rejoins_only_its_page(monkeypatch: pytest.MonkeyPatch) -> None:
    """A result for one site (an agent's post) re-joins only the page of endpoints it is on, not its
    whole group: the other pages' chunks are the very same objects, and the body is still whole."""
    monkeypatch.setattr("monitor.exposition.pages.PAGE_ENDPOINTS", 10)
    targets = fleet(groups=1, per_group=45)  # pages of 10, 10, 10, 10, 5
    sink = MetricsSink()
    sink.set_targets(targets)
    sink.consume(cycle_of(targets, "g0"))
    before = sink.exposition()[:-1]
    one = targets[23]  # on the third page (sites 20 … 29)
    sink.consume(Cycle("agent", "g0", 0.0, 0.0, (icmp(one, SOME_TIME, 0.004, 0.004, 0.004),)))
    after = sink.exposition()[:-1]
    kept = {id(chunk) for chunk in before}
    changed = b"".join(chunk for chunk in after if id(chunk) not in kept)
    sites = {int(n) for n in re.findall(rb'endpoint="g0-site-(\d+)"', changed)}
    assert sites == set(range(20, 30)), sorted(sites)
    text = b"".join(after).decode()
    ups = [s.labels["endpoint"] for f in text_string_to_metric_families(text) if f.name == "connmon_up"
           for s in f.samples]
    assert sorted(ups) == sorted(t.name for t in targets)
    sent = {s.labels["endpoint"]: s.value for f in text_string_to_metric_families(text)
            if f.name == "connmon_icmp_packets_sent" for s in f.samples}
    assert sent["g0-site-23"] == 6 and sent["g0-site-22"] == 3  # the post counted, on its own site only


def test_a_body_of_many_chunks_is_written_in_few_pieces() -> None:
    """Issue 9: a write per chunk (~1,000 at 10,000 sites) cost each scrape ~20 ms of event-loop time.
    Small chunks are joined up to WRITE_BYTES, large ones sliced; the bytes are exactly the body's."""
    chunks = [bytes([i % 251]) * 4000 for i in range(1000)] + [b"x" * (3 * WRITE_BYTES + 5)] + [b"tail"] * 3
    pieces = [bytes(p) for p in write_pieces(chunks)]
    assert b"".join(pieces) == b"".join(chunks)
    total = sum(map(len, chunks))
    assert len(pieces) <= total // WRITE_BYTES + 3
    assert all(len(p) < 2 * WRITE_BYTES for p in pieces)
    assert list(write_pieces([])) == []
