"""The agents' API under slow links and hostile input (issue 24), on a real ``connmon run`` over loopback.

Loopback hands a server a whole body at once; VSAT and LTE do not. So bodies here go over a raw
socket (``TCP_NODELAY``, a pause between pieces), cut at random places, as a slow link would
deliver them. Every refusal is checked to change nothing: the site's series in ``/metrics``, its
rows in the history and its sequence number are what they were. The daemon only serves: every
site is an agent site, so it probes nothing, and every byte stays on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from monitor.agent.centre.registry import token_hash
from tests.running import samples, stop_process, value

PORT = 19801
HOST = "127.0.0.1"
IDLE_TIMEOUT_SECONDS = 2.0  # --web.agent-body-timeout: short, so a stalled body is refused quickly here
SITES = ("seg-1", "seg-2", "seg-3", "text-1", "text-2", "other-1", "junk-1", "grant-1", "grant-2", "grant-3",
         "stall-1")
TOKENS = {site: f"token-of-{site}" for site in SITES}
GRANT_BYTES = 1_000_000


@dataclass
class Centre:
    proc: subprocess.Popen[str]
    state: Path
    stderr: Path

    def url(self, path: str) -> str:
        return f"http://{HOST}:{PORT}{path}"

    def log(self) -> str:
        return self.stderr.read_text(encoding="utf-8", errors="replace")


def _config(tmp: Path) -> Path:
    rows = []
    for site in SITES:
        throughput = ""
        if site.startswith("grant-"):  # a test slot is granted at once, for 1 MB each way
            throughput = (", throughput: {method: http, every: 10s, duration: 1s, omit: 0s, timeout: 2s, "
                          f"bytes: {GRANT_BYTES}}}")
        rows.append(f"      - {{name: {site}, agent: {{token_sha256: {token_hash(TOKENS[site])}}}{throughput}}}")
    path = tmp / "centre.yaml"
    path.write_text("throughput: {max_concurrent: 10}\ndefaults:\n  icmp: {interval: 60s}\ngroups:\n"
                    "  - name: vsat\n    kind: school\n    district: Shalkar\n    link: satellite\n    mode: agent\n"
                    "    endpoints:\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def centre(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Centre]:
    tmp = tmp_path_factory.mktemp("edge")
    config = _config(tmp)
    stderr = tmp / "stderr.log"
    with stderr.open("w", encoding="utf-8") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "monitor", "run", "--config", str(config), "--listen", f"{HOST}:{PORT}",
             "--state-dir", str(tmp / "state"), "--web.agent-body-timeout", f"{IDLE_TIMEOUT_SECONDS}s"],
            stdout=subprocess.DEVNULL, stderr=err, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    the_centre = Centre(proc, tmp / "state", stderr)
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, the_centre.log()
        with contextlib.suppress(OSError):
            if http("GET", the_centre.url("/-/ready"))[0] == 200:
                break
        assert time.monotonic() < deadline, the_centre.log()
        time.sleep(0.1)
    try:
        yield the_centre
    finally:
        stop_process(proc)


# ---------------------------------------------------------------------------------------------- clients
def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         ) -> tuple[int, dict[str, str], bytes]:
    """A request through urllib, no proxies (one write of the whole body, as loopback delivers it)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with opener.open(req, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def pieced(body: bytes, path: str, token: str | None, *, cuts: int = 0, gap_range: tuple[float, float] = (0.005, 0.05),
           stall_after: int | None = None, rng: random.Random | None = None, content_type: str = "application/json",
           headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes, float]:
    """POST ``body`` over a raw socket in ``cuts + 1`` pieces cut at random places, a random gap between them.

    With ``stall_after``, only that many bytes are sent and the sender then waits for the answer.
    Returns (status, headers, body, seconds from the last byte sent to the answer).
    """
    rng = rng or random.Random(0)
    head = [f"POST {path} HTTP/1.1", f"Host: {HOST}:{PORT}", f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}", "Connection: close"]
    if token is not None:
        head.append(f"Authorization: Bearer {token}")
    head.extend(f"{k}: {v}" for k, v in (headers or {}).items())
    raw = ("\r\n".join(head) + "\r\n\r\n").encode("utf-8")
    payload = body if stall_after is None else body[:stall_after]
    points = sorted(rng.sample(range(1, len(payload)), min(cuts, max(0, len(payload) - 1)))) if cuts else []
    pieces = [payload[a:b] for a, b in zip([0, *points], [*points, len(payload)], strict=True)]
    with socket.create_connection((HOST, PORT), timeout=120) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(raw)
        for i, piece in enumerate(pieces):
            if i:
                time.sleep(rng.uniform(*gap_range))
            sock.sendall(piece)
        sent_at = time.monotonic()
        answer = _read_answer(sock)
    status, got, text = answer
    return status, got, text, time.monotonic() - sent_at


def _read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        if b"\r\n\r\n" in data:
            head, _, rest = data.partition(b"\r\n\r\n")
            got = _headers(head)
            if "content-length" in {k.lower() for k in got} and \
                    len(rest) >= int({k.lower(): v for k, v in got.items()}["content-length"]):
                break
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, _headers(head), rest


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines)}


def batch(site: str, first_seq: int, count: int, *, instance: str = "i1", at: float | None = None,
          **agent: Any) -> dict[str, Any]:
    at = time.time() - 3600 if at is None else at
    return {"site": site,
            "agent": {"version": "0.1.0", "instance": instance, "boot_id": "b1", "uptime_seconds": 5000.0,
                      "sent_at": time.time(), "spool_dropped": 0, **agent},
            "results": [{"seq": first_seq + i, "type": "icmp", "path": "centre", "started_at": at + i,
                         "address": "192.0.2.10", "sent": 3, "rtts_seconds": [0.6, 0.61, None], "error": None,
                         "error_detail": ""} for i in range(count)]}


def throughput_result(seq: int, **fields: Any) -> dict[str, Any]:
    at = time.time() - 600
    result = {"seq": seq, "type": "throughput", "method": "http", "slot": None, "started_at": at, "ended_at": at + 3,
              "address": "192.0.2.10", "error": None, "error_detail": "",
              "directions": [{"direction": "download", "started_at": at, "ended_at": at + 2,
                              "bits_per_second": 5e6, "bytes": 1_250_000, "measured_seconds": 2.0,
                              "retransmits": 0, "error": None, "error_detail": ""}]}
    for key, val in fields.items():
        if key.startswith("direction_"):
            result["directions"][0][key.removeprefix("direction_")] = val  # type: ignore[index]
        else:
            result[key] = val
    return result


def encode(data: Any) -> bytes:
    """JSON as an agent writes it; ``ensure_ascii`` keeps lone surrogates as ``\\ud800`` escapes."""
    return json.dumps(data, ensure_ascii=True).encode("ascii")


def history(centre: Centre, site: str) -> list[float]:
    """The started_at of every ICMP cycle the history holds for ``site``."""
    with sqlite3.connect(f"file:{centre.state / 'history.sqlite3'}?mode=ro", uri=True) as db:
        return [r[0] for r in db.execute(
            "SELECT c.started_at FROM icmp c JOIN endpoints e ON e.id = c.endpoint_id WHERE e.name = ? "
            "ORDER BY c.started_at", (site,))]


def wait_for_history(centre: Centre, site: str, count: int) -> list[float]:
    deadline = time.monotonic() + 60
    while True:
        rows = history(centre, site)
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def metrics(centre: Centre) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    status, _, text = http("GET", centre.url("/metrics"))
    assert status == 200
    return samples(text.decode("utf-8"))


def accepted(parsed: Any, site: str) -> float:
    return value(parsed, "connmon_agent_results_total", endpoint=site, outcome="accepted")


def rejected(parsed: Any, code: int) -> float:
    return value(parsed, "connmon_agent_requests_rejected_total", code=str(code))


# ---------------------------------------------------------------------------------------------- segmentation
@pytest.mark.parametrize(("site", "size", "cuts"), [("seg-1", 1, 3), ("seg-2", 50, 12), ("seg-3", 1000, 40)])
def test_a_batch_in_pieces_is_taken_whole_and_stored_once(centre: Centre, site: str, size: int, cuts: int) -> None:
    """Cut at random places, 5-50 ms between pieces: 200, every result in the metrics and the history once;
    the same batch again (a lost answer) is all duplicates and stores nothing more."""
    rng = random.Random(size)
    body = encode(batch(site, 1, size))
    status, _, text, _ = pieced(body, "/api/v1/agent/results", TOKENS[site], cuts=cuts, rng=rng)
    assert status == 200, text
    assert json.loads(text) == {"accepted": size, "duplicates": 0, "last_seq": size, "gap_cause": None}
    assert len(wait_for_history(centre, site, size)) == size
    status, _, text, _ = pieced(body, "/api/v1/agent/results", TOKENS[site], cuts=cuts, rng=rng)
    assert status == 200, text
    assert json.loads(text)["duplicates"] == size
    assert accepted(metrics(centre), site) == size
    time.sleep(0.5)  # a second copy, had it been taken, would be on its way to the history by now
    assert len(history(centre, site)) == size


def test_sixteen_kib_pieces_five_ms_apart_are_one_body(centre: Centre) -> None:
    """The issue's own case: 500 results (~125 KB) in 16 KiB pieces 5 ms apart was cut at char 16384."""
    site = "seg-1"
    before = accepted(metrics(centre), site)
    body = encode(batch(site, 10, 500))
    pieces = [body[i:i + 16384] for i in range(0, len(body), 16384)]
    with socket.create_connection((HOST, PORT), timeout=60) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall((f"POST /api/v1/agent/results HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      f"Authorization: Bearer {TOKENS[site]}\r\nContent-Length: {len(body)}\r\n"
                      "Connection: close\r\n\r\n").encode())
        for piece in pieces:
            time.sleep(0.005)
            sock.sendall(piece)
        status, _, text = _read_answer(sock)
    assert len(pieces) >= 5
    assert status == 200, text
    assert accepted(metrics(centre), site) == before + 500


def test_a_chunked_body_in_pieces_is_taken(centre: Centre) -> None:
    """Transfer-Encoding: chunked (no Content-Length), chunks split across segments."""
    site = "seg-2"
    before = accepted(metrics(centre), site)
    body = encode(batch(site, 100, 20))
    chunks = [body[i:i + 700] for i in range(0, len(body), 700)]
    wire = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks) + b"0\r\n\r\n"
    with socket.create_connection((HOST, PORT), timeout=60) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall((f"POST /api/v1/agent/results HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      f"Authorization: Bearer {TOKENS[site]}\r\nTransfer-Encoding: chunked\r\n"
                      "Connection: close\r\n\r\n").encode())
        for i in range(0, len(wire), 333):
            time.sleep(0.005)
            sock.sendall(wire[i:i + 333])
        status, _, text = _read_answer(sock)
    assert status == 200, text
    assert accepted(metrics(centre), site) == before + 20


def test_a_body_that_stalls_gets_408_and_changes_nothing(centre: Centre) -> None:
    site = "stall-1"
    before = metrics(centre)
    body = encode(batch(site, 1, 50))
    status, got, text, waited = pieced(body, "/api/v1/agent/results", TOKENS[site], cuts=3,
                                       stall_after=len(body) // 2)
    assert status == 408, text
    assert got.get("Connection", "").lower() == "close"
    assert waited >= IDLE_TIMEOUT_SECONDS * 0.9  # not before the idle timeout (a bound on connmon, not a timing)
    after = metrics(centre)
    assert rejected(after, 408) == rejected(before, 408) + 1
    assert value(after, "connmon_agent_results_total", endpoint=site, outcome="accepted") == 0
    assert history(centre, site) == []


def test_fifty_stalled_bodies_leave_metrics_answering_and_are_bounded(centre: Centre) -> None:
    """Fifty senders that stop half-way hold no more than MAX_BODY_READS reads; the rest get 503 at once;
    /metrics answers all along; every one of them is counted, and an honest agent then gets through."""
    from monitor.agent.centre.api import MAX_BODY_READS

    before = metrics(centre)
    body = encode(batch("stall-1", 1, 50))
    answers: list[int] = []

    def stalled() -> None:
        answers.append(pieced(body, "/api/v1/agent/results", TOKENS["stall-1"], stall_after=len(body) // 2)[0])

    threads = [threading.Thread(target=stalled) for _ in range(50)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    for _ in range(3):
        assert http("GET", centre.url("/metrics"))[0] == 200
    for t in threads:
        t.join(60)
    after = metrics(centre)
    assert len(answers) == 50
    assert sorted(set(answers)) in ([408, 503], [408, 429, 503], [408, 429])
    assert answers.count(408) <= MAX_BODY_READS
    refused_busy = rejected(after, 503) - rejected(before, 503)
    refused_rate = rejected(after, 429) - rejected(before, 429)
    assert rejected(after, 408) - rejected(before, 408) == answers.count(408)
    assert refused_busy == answers.count(503) and refused_rate == answers.count(429)
    assert answers.count(503) >= 50 - MAX_BODY_READS - answers.count(429)
    ok = pieced(encode(batch("seg-3", 5000, 2)), "/api/v1/agent/results", TOKENS["seg-3"], cuts=2)
    assert ok[0] == 200, ok[2]


def test_an_oversized_batch_gets_413_even_from_a_client_that_sends_all_before_reading(centre: Centre) -> None:
    """A body over the limit (declared, or sent chunked with no length) gets 413, and a client that writes its
    whole body before it reads (urllib, as many do) still reads that answer, not a reset; nothing is taken."""
    site = "seg-2"
    before = metrics(centre)
    big = b'{"site": "seg-2", "pad": "' + b"x" * (6 * 1024 * 1024) + b'"}'
    auth = {"Authorization": f"Bearer {TOKENS[site]}", "Content-Type": "application/json"}
    status, got, answer = http("POST", centre.url("/api/v1/agent/results"), big, auth)
    assert status == 413, answer
    assert got.get("Connection", "").lower() == "close"
    chunks = (big[i:i + 65536] for i in range(0, len(big), 65536))
    status, _, answer = http("POST", centre.url("/api/v1/agent/results"), chunks,  # type: ignore[arg-type]
                             {**auth, "Transfer-Encoding": "chunked"})
    assert status == 413, answer
    after = metrics(centre)
    assert rejected(after, 413) - rejected(before, 413) == 2
    assert accepted(after, site) == accepted(before, site)


# ---------------------------------------------------------------------------------------------- text
LONE_SURROGATE, NUL, C1, BIDI = "\ud800", "\x00", "\x85", "\u202e"
NAME_FAULTS = {"lone surrogate": LONE_SURROGATE, "NUL": NUL, "C1 control": C1, "bidi override": BIDI}
DETAIL_FAULTS = {"lone surrogate": LONE_SURROGATE, "NUL": NUL, "C1 control": C1, "newline": "\n"}


def _with(body: dict[str, Any], path: str, text: str) -> dict[str, Any]:
    """``body`` with the string at the JSON path ``path`` (``$.agent.version``, ``$.results[0].address``) set."""
    body = json.loads(json.dumps(body))
    keys = [k for part in path.removeprefix("$.").split(".") for k in part.replace("]", "").split("[")]
    node: Any = body
    for key in keys[:-1]:
        node = node[int(key)] if key.isdigit() else node[key]
    node[keys[-1]] = f"odd{text}text"
    return body


ICMP_FIELDS = {"$.site": NAME_FAULTS, "$.agent.version": NAME_FAULTS, "$.agent.instance": NAME_FAULTS,
               "$.agent.boot_id": NAME_FAULTS, "$.results[0].address": NAME_FAULTS,
               "$.results[0].error_detail": DETAIL_FAULTS}
THROUGHPUT_FIELDS = {"$.results[0].slot": NAME_FAULTS, "$.results[0].address": NAME_FAULTS,
                     "$.results[0].error_detail": DETAIL_FAULTS,
                     "$.results[0].directions[0].error_detail": DETAIL_FAULTS}


def test_odd_text_in_any_string_field_gets_400_naming_it_and_breaks_no_sink(centre: Centre) -> None:
    """Lone surrogates (JSON ``\\ud800``), C0/C1 controls and bidi overrides, in every string field of both
    routes: 400 naming the field, nothing counted; /metrics, /api/v1/sites and /api/v1/summary answer 200
    after each; the history goes on writing another site's results."""
    site = "text-1"
    before = metrics(centre)
    refused = 0
    cases = [(batch(site, 1, 1), ICMP_FIELDS), ({**batch(site, 1, 0), "results": [throughput_result(1)]},
                                                THROUGHPUT_FIELDS)]
    for good, fields in cases:
        for path, faults in fields.items():
            for fault, text in faults.items():
                status, _, answer = http("POST", centre.url("/api/v1/agent/results"), encode(_with(good, path, text)),
                                         {"Authorization": f"Bearer {TOKENS[site]}",
                                          "Content-Type": "application/json"})
                assert status == 400, (path, fault, answer)
                error = json.loads(answer)
                assert error["parameter"] == path, (fault, error)
                refused += 1
                time.sleep(0.3)  # within the token's rate (2 a second)
    for fault, text in NAME_FAULTS.items():  # the slot route's one field
        status, _, answer = http("POST", centre.url("/api/v1/agent/slot"), encode({"site": f"odd{text}"}),
                                 {"Authorization": f"Bearer {TOKENS[site]}", "Content-Type": "application/json"})
        assert status == 400, (fault, answer)
        assert json.loads(answer)["parameter"] == "site"
        refused += 1
    for path in ("/metrics", "/api/v1/sites", f"/api/v1/sites/{site}", "/api/v1/summary"):
        status, _, answer = http("GET", centre.url(path))
        assert status == 200, (path, answer[:300])
    after = metrics(centre)
    assert rejected(after, 400) - rejected(before, 400) == refused
    assert accepted(after, site) == 0
    assert history(centre, site) == []
    other = batch("text-2", 1, 3)
    other["results"][0]["error_detail"] = "iperf3:\ttab-separated détail, العربية \u200f ok"  # free text allows these
    status, _, answer = http("POST", centre.url("/api/v1/agent/results"), encode(other),
                             {"Authorization": f"Bearer {TOKENS['text-2']}", "Content-Type": "application/json"})
    assert status == 200, answer
    assert len(wait_for_history(centre, "text-2", 3)) == 3


def test_only_utf8_json_with_unique_keys_is_taken(centre: Centre) -> None:
    """415 for another media type or charset, 400 for UTF-16 or a BOM, 400 for a duplicate key (which value
    counts would be a guess): each refusal counted and nothing taken."""
    site = "text-2"
    auth = {"Authorization": f"Bearer {TOKENS[site]}"}
    good = json.dumps(batch(site, 50, 1))
    url = centre.url("/api/v1/agent/results")
    before = metrics(centre)
    cases = [
        ({"Content-Type": "text/plain"}, good.encode(), 415),
        ({}, good.encode(), 415),
        ({"Content-Type": "application/json; charset=utf-16"}, good.encode("utf-16"), 415),
        ({"Content-Type": "application/json"}, good.encode("utf-16"), 400),
        ({"Content-Type": "application/json"}, good.encode("utf-32"), 400),
        ({"Content-Type": "application/json"}, b"\xef\xbb\xbf" + good.encode(), 400),
        ({"Content-Type": "application/json"}, b"\xff" + good.encode(), 400),
        ({"Content-Type": "application/json"}, good.replace('"site": "text-2"', '"site": "text-2", "site": "seg-1"',
                                                             1).encode(), 400),
        ({"Content-Type": "application/json"}, good.replace('"sent": 3', '"sent": 3, "sent": 1').encode(), 400),
    ]
    for headers, body, want in cases:
        status, _, answer = http("POST", url, body, {**auth, **headers})
        assert status == want, (headers, body[:40], answer)
    after = metrics(centre)
    assert rejected(after, 415) - rejected(before, 415) == 3
    assert rejected(after, 400) - rejected(before, 400) == 6
    assert accepted(after, site) == accepted(before, site)
    status, _, answer = http("POST", url, good.encode(), {**auth, "Content-Type": "application/json; charset=UTF-8"})
    assert status == 200, answer


def test_odd_bytes_in_headers_are_no_token_and_no_error(centre: Centre) -> None:
    """A token with bytes that are not UTF-8, or a NUL: 401 or 400, never 500, no traceback."""
    for token in (b"\xff\xfe", b"abc\xed\xa0\x80", "токен".encode()):
        with socket.create_connection((HOST, PORT), timeout=30) as sock:
            sock.sendall(b"POST /api/v1/agent/results HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Authorization: Bearer " + token + b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
            status, _, _ = _read_answer(sock)
        assert status in (400, 401), token
    assert "Traceback" not in centre.log()


# ---------------------------------------------------------------------------------------------- test routes
def _slot(centre: Centre, site: str) -> str:
    """A granted slot for ``site`` (asked again while the plan says not yet)."""
    deadline = time.monotonic() + 30
    while True:
        status, _, answer = http("POST", centre.url("/api/v1/agent/slot"), json.dumps({"site": site}).encode(),
                                 {"Authorization": f"Bearer {TOKENS[site]}", "Content-Type": "application/json"})
        assert status == 200, answer
        grant = json.loads(answer)
        if grant["granted"]:
            assert grant["max_bytes"] == GRANT_BYTES
            return str(grant["slot"])
        assert time.monotonic() < deadline, grant
        time.sleep(min(1.0, grant["retry_after_seconds"]) + 0.05)


def _raw(request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` and read until the server closes: every byte it sent, body included."""
    with socket.create_connection((HOST, PORT), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(1 << 20):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), _headers(head), body


def test_download_honours_the_grant_and_head_sends_no_body(centre: Centre) -> None:
    site = "grant-1"
    slot = _slot(centre, site)
    auth = f"Authorization: Bearer {TOKENS[site]}\r\n"
    before = metrics(centre)
    status, got, body = _raw(f"HEAD /api/v1/agent/download?slot={slot} HTTP/1.1\r\nHost: x\r\n{auth}"
                             "Connection: close\r\n\r\n".encode())
    assert (status, got["Content-Length"], body) == (200, str(GRANT_BYTES), b"")
    status, _, body = _raw(f"GET /api/v1/agent/download?slot={slot}&bytes={3 * GRANT_BYTES} HTTP/1.1\r\n"
                           f"Host: x\r\n{auth}Connection: close\r\n\r\n".encode())
    assert status == 413 and json.loads(body)["parameter"] == "bytes"
    status, got, body = _raw(f"GET /api/v1/agent/download?slot={slot} HTTP/1.1\r\nHost: x\r\n{auth}"
                             "Connection: close\r\n\r\n".encode())
    assert status == 200 and len(body) == GRANT_BYTES == int(got["Content-Length"])  # the whole grant, no more
    status, _, body = _raw(f"GET /api/v1/agent/download?slot={slot}&bytes=1 HTTP/1.1\r\nHost: x\r\n{auth}"
                           "Connection: close\r\n\r\n".encode())
    assert status == 413, body  # spent
    other = f"Authorization: Bearer {TOKENS['grant-2']}\r\n"
    for query in (f"slot={slot}", "slot=not-a-slot", ""):  # another site's slot, none, no slot at all
        status, _, body = _raw(f"GET /api/v1/agent/download?{query} HTTP/1.1\r\nHost: x\r\n{other}"
                               "Connection: close\r\n\r\n".encode())
        assert status == 403 and len(body) < 300 and json.loads(body)["parameter"] == "slot"
    after = metrics(centre)
    assert rejected(after, 413) - rejected(before, 413) == 2
    assert rejected(after, 403) - rejected(before, 403) == 3


def test_upload_stops_at_the_grant(centre: Centre) -> None:
    site = "grant-2"
    slot = _slot(centre, site)
    url = centre.url(f"/api/v1/agent/upload?slot={slot}")
    auth = {"Authorization": f"Bearer {TOKENS[site]}", "Content-Type": "application/octet-stream"}
    before = metrics(centre)
    status, _, answer = http("POST", url, bytes(GRANT_BYTES // 2), auth)
    assert (status, json.loads(answer)) == (200, {"bytes": GRANT_BYTES // 2})
    status, _, answer = http("POST", url, bytes(GRANT_BYTES), auth)  # declared beyond what is left
    assert status == 413, answer
    slot = _slot(centre, "grant-3")
    auth3 = f"Authorization: Bearer {TOKENS['grant-3']}\r\n"
    piece = bytes(65536)
    pieces = 1000  # 64 MB offered, sent chunked: no length to refuse up front, the stream is cut at the grant
    sent = [0]
    with socket.create_connection((HOST, PORT), timeout=30) as sock:
        sock.sendall(f"POST /api/v1/agent/upload?slot={slot} HTTP/1.1\r\nHost: x\r\n{auth3}"
                     "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n".encode())

        def send() -> None:
            with contextlib.suppress(OSError):
                for _ in range(pieces):
                    sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    sent[0] += len(piece)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        status, got, answer = _read_answer(sock)  # while the sender sends, as an HTTP client does
        assert status == 413, answer
        assert got["Connection"].lower() == "close"
        time.sleep(1.0)
        stalled_at = sent[0]
        time.sleep(1.0)
        assert sent[0] == stalled_at < pieces * len(piece)  # the centre stopped taking it: flow control holds it
        sock.shutdown(socket.SHUT_RDWR)
        sender.join(30)
    after = metrics(centre)
    assert rejected(after, 413) - rejected(before, 413) == 2


# ---------------------------------------------------------------------------------------------- protocol junk
def test_malformed_http_is_answered_counted_and_one_quiet_line(centre: Centre) -> None:
    def junk_count() -> float:
        return sum(metrics(centre).get("connmon_http_malformed_requests_total", {}).values())

    before = junk_count()
    requests = [
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n",
        b"POST /api/v1/agent/results HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999999\r\n\r\n",
        b"POST /api/v1/agent/results HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nBad Header Name: x\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n",
    ]
    for junk in requests:
        status, _, _ = _raw(junk)
        assert 400 <= status < 500, junk[:60]
    assert junk_count() - before == len(requests)
    log = centre.log()
    assert "Traceback" not in log
    lines = [line for line in log.splitlines() if "malformed HTTP request" in line]
    assert 1 <= len(lines) <= 2, lines  # one a minute (the first test of this kind may share the minute)
    assert all(" WARNING " in line or "WARNING" in line.split()[:4] for line in lines), lines
    assert "ERROR" not in "".join(line for line in log.splitlines() if "aiohttp" in line)


# ------------------------------------------------------------------------------------ failure after acceptance
JOURNAL_PORT = 19802


def test_a_batch_the_journal_cannot_record_gets_503_and_its_retry_is_stored_once(tmp_path: Path) -> None:
    """The state directory on a small tmpfs that a filler file takes whole: the journal cannot be written, so
    a valid batch gets 503 (Retry-After) with nothing published; the filler freed, the same batch is taken
    and stored exactly once, and posting it yet again is all duplicates."""
    from tests.conftest import need_root

    need_root()
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(state)], check=True)
    try:
        _journal_fault_run(tmp_path, state)
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def _journal_fault_run(tmp_path: Path, state: Path) -> None:
    site = "seg-1"
    store = tmp_path / "history.sqlite3"  # the history elsewhere: only the journal meets the full disk
    stderr = tmp_path / "stderr.log"
    with stderr.open("w", encoding="utf-8") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "monitor", "run", "--config", str(_config(tmp_path)), "--listen",
             f"{HOST}:{JOURNAL_PORT}", "--state-dir", str(state), "--store", f"sqlite:///{store}"],
            stdout=subprocess.DEVNULL, stderr=err, text=True)
    base = f"http://{HOST}:{JOURNAL_PORT}"
    centre = Centre(proc, tmp_path, stderr)
    try:
        deadline = time.monotonic() + 60
        while not _answers(f"{base}/-/ready"):
            assert proc.poll() is None and time.monotonic() < deadline, centre.log()
            time.sleep(0.1)
        filler = state / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as f:
            while True:
                f.write(bytes(4096))
                f.flush()
        body = encode(batch(site, 1, 5))
        auth = {"Authorization": f"Bearer {TOKENS[site]}", "Content-Type": "application/json"}
        for _ in range(2):
            status, got, answer = http("POST", f"{base}/api/v1/agent/results", body, auth)
            assert status == 503, answer
            assert int(got["Retry-After"]) > 0
        parsed = samples(http("GET", f"{base}/metrics")[2].decode())
        assert value(parsed, "connmon_agent_results_total", endpoint=site, outcome="accepted") == 0
        assert value(parsed, "connmon_agent_requests_rejected_total", code="503") == 2
        assert not any(dict(k).get("endpoint") == site for k in parsed.get("connmon_up", {}))  # nothing published
        filler.unlink()
        status, _, answer = http("POST", f"{base}/api/v1/agent/results", body, auth)
        assert status == 200, answer
        assert json.loads(answer)["accepted"] == 5
        status, _, answer = http("POST", f"{base}/api/v1/agent/results", body, auth)
        assert json.loads(answer) == {"accepted": 0, "duplicates": 5, "last_seq": 5, "gap_cause": None}
        deadline = time.monotonic() + 60
        while True:
            with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
                rows = db.execute("SELECT count(*) FROM icmp").fetchone()[0]
            if rows >= 5 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert rows == 5
        parsed = samples(http("GET", f"{base}/metrics")[2].decode())
        assert value(parsed, "connmon_agent_results_total", endpoint=site, outcome="accepted") == 5
        log = centre.log()
        said = [line for line in log.splitlines() if "agent sequence journal" in line]
        assert len(said) == 2 and "cannot write" in said[0] and "works again" in said[1], said  # not per batch
        assert "Traceback" not in log
    finally:
        stop_process(proc)
    assert proc.returncode == 0, centre.log()


def _answers(url: str) -> bool:
    with contextlib.suppress(OSError):
        return http("GET", url)[0] == 200
    return False
