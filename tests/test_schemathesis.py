"""The document is the contract (issue 24): schemathesis against a live ``connmon run`` on 127.0.0.1.

``st run`` (schemathesis 4, every check: ``not_a_server_error``, ``status_code_conformance``,
``content_type_conformance``, ``response_headers_conformance``, ``response_schema_conformance``,
``positive_data_acceptance``, ``negative_data_rejection``, ``missing_required_header``,
``unsupported_method``, ``ignored_auth`` and the rest) generates requests from
``monitor/web/openapi.yaml`` for every operation, the read API's and the agents', in all its phases
(examples, coverage, fuzzing; deterministic, a bounded number of examples), and checks each answer
against the document. The run must find nothing: no 5xx, no status, header, content type or body
the document does not describe, no request the document calls valid that the server refuses
(``positive_data_acceptance`` expects 2xx; only ``GET /api/v1/sites/{name}`` may answer 404, for a
name no site has), and no invalid one that it takes.

The daemon probes only loopback sites (127.0.0.2, 127.0.0.3) and serves the agent routes to agent
sites whose tokens the test knows; nothing leaves 127.0.0.0/8.

What a schema cannot say is mapped into the generated cases by the hooks below (``st run`` loads
this file as its hooks module), and only where the generated value is valid by the schema, so an
invalid value stays invalid and its case negative (schemathesis re-validates a mapped case):

* agent routes: the ``Authorization`` header is a token of the operation's own pool of agent sites
  (an auth provider, taken in turn, so the tokens' rate limit of bursts of 60 is not what answers);
* ``POST /api/v1/agent/results``: ``site`` becomes the token's site; ``seq`` numbers are renumbered
  to increase along the batch (and from batch to batch, so results are taken, not duplicates);
  every time is moved into the last day of the centre's clock (the centre refuses times more than
  300 s ahead or 400 days old), and a throughput result's ``ended_at`` is put after its
  ``started_at``; a direction that appears twice in one test is dropped; an ICMP result's ``sent``
  is brought between its replies and its attempts (``len(rtts_seconds)``);
* ``POST /api/v1/agent/slot``: ``site`` becomes the token's site;
* ``GET``/``HEAD /api/v1/agent/download`` and ``POST /api/v1/agent/upload`` need a live slot of the
  token's site: the test asks one for each site of their pools first (the sites' throughput
  settings grant at once and for 40 minutes) and the hooks put it in ``slot``. A download's
  ``bytes`` is brought to at most 1,024 (what the grant still allows: each download takes its
  bytes from the grant), and a ``GET`` without ``bytes`` gets one, since it would take all the
  grant has left; :func:`test_downloads_and_uploads_stay_within_the_grant` checks that default;
* ``GET /api/v1/summary``: ``from`` and ``to`` are swapped when ``from`` is later, and a
  ``timezone`` the machine's time zone database lacks is replaced by one it has;
* ``POST /api/v1/maintenance`` (the daemon runs with ``--web.enable-admin-api``): a valid ``starts_at`` becomes
  a minute ago and a valid ``ends_at`` an hour ahead (in the form each had: Unix seconds or RFC 3339), since a
  window must end in the future and after its start; a third of the valid targets become one of the probed
  sites (the rest get 404, as does ``DELETE /api/v1/maintenance/{id}`` for an id no window has);
* ``POST /api/v1/agent/enrol`` (issue 18): a code valid by the schema becomes the next of the codes the test
  invited (one per enrolment site: a code is taken once, and a site's new invite would end its open code), so
  valid cases are answered 200; a case schemathesis sends again (its code now used) gets the one answer for a
  wrong code, 403, which the operation's positive-data check therefore allows;
* and so that answers have something in them, a third of the generated site names, kinds and
  districts become ones the config has (the rest get 404, or an empty summary).
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import http.client
import itertools
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple
from zoneinfo import available_timezones

import pytest
import schemathesis
import yaml

from monitor.agent.centre.enrolment import code_hash, is_code, new_code
from monitor.agent.centre.registry import token_hash
from monitor.history.agent_tokens import open_book
from monitor.text import NAME_PATTERN
from monitor.throughput_plan import phase
from monitor.web.maintenance_api import TIME_PATTERN
from monitor.web.site_api import DATE_PATTERN

PORT = 19650  # this test's range is 19650-19669
HOST = "127.0.0.1"
CONTEXT_ENV = "CONNMON_SCHEMATHESIS_CONTEXT"
MAX_EXAMPLES = 25
# Tokens per agent operation, taken in turn: each token may send bursts of 60 requests (then 2 a second), and
# schemathesis sends a batch operation some 500 requests in a few seconds.
POOL_SIZES = {"POST /api/v1/agent/results": 12}
POOL_SIZE = 3
MAX_DOWNLOAD_IN_RUN = 1024
AGENT_POOLS = ("POST /api/v1/agent/results", "POST /api/v1/agent/slot", "GET /api/v1/agent/download",
               "HEAD /api/v1/agent/download", "POST /api/v1/agent/upload", "GET /api/v1/agent/settings")
NEEDS_SLOT = ("GET /api/v1/agent/download", "HEAD /api/v1/agent/download", "POST /api/v1/agent/upload")
EVERY_SECONDS = 7200.0
FIRST_TEST_WITHIN_SECONDS = 2.0  # agent sites are named so that their first test is due this soon
GRANT_BYTES = 64_000_000  # per direction, for the sites the run downloads from and uploads to
SMALL_GRANT_BYTES = 100_000  # for the site whose grant test_downloads_and_uploads_stay_within_the_grant spends
_CLEAN = re.compile(NAME_PATTERN)
_MAINTENANCE_TIME = re.compile(TIME_PATTERN)
ENROL_SITES = 100  # agent sites without a token, one invited code each, for POST /api/v1/agent/enrol
PROBED = ("lo-1", "lo-2")  # where mapped maintenance windows go (not the agent sites, whose slots the run uses)
_DATE = re.compile(DATE_PATTERN)
MAX_SEQ = 2**62
MAX_ECHOES = 10_000


# ------------------------------------------------------------------------------------------------ the hooks
# `st run` executes this file as its hooks module (`hooks` in its config); it reads the sites, tokens and
# slots from the environment (CONTEXT_ENV). Under pytest, without that variable, nothing registers.
class _Site(NamedTuple):  # not a dataclass: st executes this file outside sys.modules
    name: str
    token: str
    slot: str | None


def _context() -> tuple[dict[str, list[_Site]], list[str], list[str]]:
    """The agent operations' pools of sites, the names of every configured site, and the invited codes."""
    raw = json.loads(os.environ[CONTEXT_ENV])
    return ({label: [_Site(**site) for site in sites] for label, sites in raw["pools"].items()}, raw["names"],
            raw["codes"])


def _is_clean(value: object, limit: int) -> bool:
    return isinstance(value, str) and 0 < len(value) <= limit and _CLEAN.fullmatch(value) is not None


def _is_int(value: object, low: int, high: int) -> bool:
    """An integer as JSON Schema counts one: ``3.0`` is the integer 3."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _like(original: object, value: int) -> int | float:
    """``value`` written as ``original`` was (``3.0`` stays a float: whether the server takes it is under test)."""
    return float(value) if isinstance(original, float) else value


def _is_number(value: object, low: float, high: float) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) \
        and low <= value <= high


class _Mapper:
    """Puts into a case what the document says in words (see the module's docstring)."""

    def __init__(self) -> None:
        self.pools, self.names, codes = _context()
        self.codes = iter(codes)
        self.by_token = {site.token: site for sites in self.pools.values() for site in sites}
        self.turns = {label: itertools.count() for label in self.pools}
        self.seq = itertools.count(1)
        self.lock = threading.Lock()  # st's workers run operations in threads
        self.zones = sorted(available_timezones())

    def token_for(self, label: str) -> str | None:
        pool = self.pools.get(label)
        if not pool:
            return None
        with self.lock:
            return pool[next(self.turns[label]) % len(pool)].token

    def site_of(self, headers: Any) -> _Site | None:
        value = (headers or {}).get("Authorization") or ""
        return self.by_token.get(value.removeprefix("Bearer ").strip())

    def time(self, value: Any, now: float) -> Any:
        """A valid time moved into the last day (its order among others kept within a day); else as it was."""
        if not _is_number(value, 0, 1e11):
            return value
        return now - 86_400.0 + float(value) % 86_400.0

    def results(self, body: Any, site: _Site) -> Any:
        if not isinstance(body, dict):
            return body
        body = copy.deepcopy(body)
        now = time.time()
        if _is_clean(body.get("site"), 200):
            body["site"] = site.name
        agent = body.get("agent")
        if isinstance(agent, dict) and "sent_at" in agent:
            agent["sent_at"] = self.time(agent["sent_at"], now)
        items = body.get("results")
        if not isinstance(items, list):
            return body
        if all(isinstance(item, dict) and _is_int(item.get("seq"), 1, MAX_SEQ) for item in items):
            with self.lock:
                for item in items:
                    item["seq"] = _like(item["seq"], next(self.seq))
        for item in items:
            if isinstance(item, dict):
                self.result(item, now)
        return body

    def result(self, item: dict[str, Any], now: float) -> None:
        for key in ("started_at", "ended_at"):
            if key in item:
                item[key] = self.time(item[key], now)
        started: Any = item.get("started_at")
        ended: Any = item.get("ended_at")
        if _is_number(started, 0, 1e11) and _is_number(ended, 0, 1e11) and ended < started:
            item["started_at"], item["ended_at"] = ended, started
        rtts: Any = item.get("rtts_seconds")
        sent: Any = item.get("sent")
        if isinstance(rtts, list) and len(rtts) <= MAX_ECHOES and _is_int(sent, 0, MAX_ECHOES):
            replies = sum(1 for rtt in rtts if rtt is not None)
            item["sent"] = _like(sent, max(replies, min(int(sent), len(rtts))))
        directions = item.get("directions")
        if isinstance(directions, list):
            seen: set[str] = set()
            kept = []
            for direction in directions:
                name = direction.get("direction") if isinstance(direction, dict) else None
                if name in ("download", "upload"):
                    if name in seen:
                        continue
                    seen.add(name)
                if isinstance(direction, dict):
                    for key in ("started_at", "ended_at"):
                        if key in direction:
                            direction[key] = self.time(direction[key], now)
                kept.append(direction)
            item["directions"] = kept

    def download_bytes(self, value: Any) -> Any:
        text = str(value) if _is_int(value, 1, 10 * 1024**3) and not isinstance(value, float) \
            or isinstance(value, str) else None
        if text is None or not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 10 * 1024**3:
            return value
        small = 1 + (int(text) - 1) % MAX_DOWNLOAD_IN_RUN
        return small if isinstance(value, int) else str(small)

    def one_of(self, value: str, choices: list[str]) -> str:
        """A third of the values become one of ``choices`` (a known site, kind or district), the rest stay."""
        digest = zlib.crc32(value.encode("utf-8", "replace"))
        return choices[digest // 3 % len(choices)] if digest % 3 == 0 else value

    def summary(self, query: dict[str, Any]) -> dict[str, Any]:
        query = dict(query)
        for key, known in (("kind", ["school", "clinic"]), ("district", ["Aktobe", "Shalkar"])):
            if _is_clean(query.get(key), 200):
                query[key] = self.one_of(query[key], known)
        first, last = query.get("from"), query.get("to")
        if _valid_date(first) and _valid_date(last) and str(first) > str(last):
            query["from"], query["to"] = last, first
        zone = query.get("timezone")
        if isinstance(zone, str) and 0 < len(zone) <= 200 and zone not in self.zones:
            query["timezone"] = self.zones[zlib.crc32(zone.encode("utf-8", "replace")) % len(self.zones)]
        return query

    def maintenance(self, body: Any) -> Any:
        """A window's valid times moved around now (it must end in the future, after its start); a target mapped."""
        if not isinstance(body, dict):
            return body
        body = dict(body)
        now = time.time()
        for key, moved in (("starts_at", now - 60.0), ("ends_at", now + 3600.0)):
            value = body.get(key)
            if _is_number(value, 0, 32_503_680_000) and value != 32_503_680_000:  # below the exclusive maximum
                body[key] = moved
            elif isinstance(value, str) and _MAINTENANCE_TIME.fullmatch(value):
                body[key] = dt.datetime.fromtimestamp(moved, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if _is_clean(body.get("target"), 200) and body.get("kind", "site") == "site":
            body["target"] = self.one_of(body["target"], list(PROBED))
        return body

    def map(self, case: Any) -> Any:
        label = case.operation.label
        site = self.site_of(case.headers)
        if label == "GET /api/v1/summary" and isinstance(case.query, dict):
            case.query = self.summary(case.query)
        elif label == "POST /api/v1/maintenance":
            case.body = self.maintenance(case.body)
        elif label == "POST /api/v1/agent/enrol" and isinstance(case.body, dict) \
                and isinstance(case.body.get("code"), str) and is_code(case.body["code"]):
            with self.lock:
                code = next(self.codes, None)
            if code is not None:
                case.body = {**case.body, "code": code}
        elif label == "GET /api/v1/sites/{name}" and isinstance(case.path_parameters, dict) \
                and isinstance(case.path_parameters.get("name"), str) and case.path_parameters["name"]:
            case.path_parameters = {**case.path_parameters,
                                    "name": self.one_of(case.path_parameters["name"], self.names)}
        elif site is None:
            return case
        elif label == "POST /api/v1/agent/results":
            case.body = self.results(case.body, site)
        elif label == "POST /api/v1/agent/slot" and isinstance(case.body, dict) and _is_clean(
                case.body.get("site"), 200):
            case.body = {**case.body, "site": site.name}
        elif label in NEEDS_SLOT and isinstance(case.query, dict):
            query = dict(case.query)
            if _is_clean(query.get("slot"), 64) and site.slot is not None:
                query["slot"] = site.slot
            if "bytes" in query:
                query["bytes"] = self.download_bytes(query["bytes"])
            elif label == "GET /api/v1/agent/download":
                query["bytes"] = str(MAX_DOWNLOAD_IN_RUN // 2)
            case.query = query
        return case


def _valid_date(value: object) -> bool:
    if not isinstance(value, str) or not _DATE.fullmatch(value):
        return False
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        return False
    return True


if CONTEXT_ENV in os.environ:  # loaded by `st run`, to which the test gives the sites in this variable
    _MAPPER = _Mapper()

    @schemathesis.auth(refresh_interval=None, retry_on=[]).apply_to(path_regex="^/api/v1/agent/")
    class AgentToken:
        """Each agent operation's requests carry the tokens of its own pool of sites, in turn."""

        def get(self, case: Any, ctx: Any) -> str:
            return "pool"

        def set(self, case: Any, data: str, ctx: Any) -> None:
            token = _MAPPER.token_for(case.operation.label)
            if token is not None:
                case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}

    @schemathesis.hook
    def map_case(ctx: Any, case: Any) -> Any:
        return _MAPPER.map(case)

    @schemathesis.hook
    def before_add_examples(ctx: Any, examples: list[Any]) -> None:  # the document's examples skip map_case
        for case in examples:
            _MAPPER.map(case)


# ------------------------------------------------------------------------------------------------ the centre
class Centre(NamedTuple):
    proc: subprocess.Popen[str]
    pools: dict[str, list[_Site]]
    small: _Site  # a site of its own, with a small grant, for the grant test
    state: Path
    codes: list[str]  # one invited enrolment code per enrolment site

    def url(self, path: str) -> str:
        return f"http://{HOST}:{PORT}{path}"


def _names(count: int) -> list[str]:
    """Agent site names whose first throughput test falls due within seconds of start-up (their phase)."""
    limit = FIRST_TEST_WITHIN_SECONDS / EVERY_SECONDS
    found = (f"st-agent-{i}" for i in itertools.count() if phase(f"st-agent-{i}") < limit)
    return list(itertools.islice(found, count))


def _config(tmp: Path, pools: dict[str, list[_Site]], small: _Site) -> Path:
    rows = [f"      - {{name: {site.name}, agent: {{token_sha256: {token_hash(site.token)}}}}}"
            for sites in pools.values() for site in sites]
    rows.append(f"      - {{name: {small.name}, agent: {{token_sha256: {token_hash(small.token)}}}, "
                f"throughput: {{bytes: {SMALL_GRANT_BYTES}}}}}")
    rows.extend(f"      - {{name: st-enrol-{i}}}" for i in range(ENROL_SITES))  # tokens come by enrolment
    path = tmp / "connmon.yaml"
    path.write_text(f"""
defaults:
  icmp: {{interval: 5s, count: 2, spacing: 50ms, timeout: 500ms}}
throughput: {{max_concurrent: 100}}
groups:
  - name: loop
    kind: school
    district: Aktobe
    endpoints:
      - {{name: lo-1, host: 127.0.0.2, link: fibre, lat: 50.28, lon: 57.17}}
      - {{name: lo-2, host: 127.0.0.3, target_mbps: 10}}
      - {{name: lo-soon, status: planned, planned_date: 2027-03-01}}
  - name: vsat
    kind: clinic
    district: Shalkar
    link: satellite
    mode: agent
    throughput: {{method: http, every: {EVERY_SECONDS:g}s, duration: 600s, omit: 0s, timeout: 600s,
                 bytes: {GRANT_BYTES}, directions: [download, upload]}}
    endpoints:
{chr(10).join(rows)}
""", encoding="utf-8")
    return path


def _request(method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
             read: int | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request to the centre; ``read`` bytes of the body at most (the connection is then dropped)."""
    conn = http.client.HTTPConnection(HOST, PORT, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read(read) if read is not None else response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        conn.close()


def _slot(site: _Site) -> str:
    """A grant for ``site`` (its first test is due within seconds of start-up)."""
    body = json.dumps({"site": site.name}).encode()
    headers = {"Authorization": f"Bearer {site.token}", "Content-Type": "application/json"}
    deadline = time.monotonic() + 30
    while True:
        status, _, answer = _request("POST", "/api/v1/agent/slot", body, headers)
        grant = json.loads(answer)
        assert status == 200, grant
        if grant["granted"]:
            return str(grant["slot"])
        assert grant["reason"] == "not_due" and time.monotonic() < deadline, grant
        time.sleep(min(1.0, grant["retry_after_seconds"]))


@pytest.fixture(scope="module")
def centre(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Centre]:
    tmp = tmp_path_factory.mktemp("schemathesis")
    sizes = {label: POOL_SIZES.get(label, POOL_SIZE) for label in AGENT_POOLS}
    names = iter(_names(sum(sizes.values()) + 1))
    pools = {label: [_Site(next(names), f"token-{i}-{j}", None) for j in range(sizes[label])]
             for i, label in enumerate(AGENT_POOLS)}
    small = _Site(next(names), "token-small", None)
    config = _config(tmp, pools, small)
    stderr = (tmp / "connmon.log").open("w", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "monitor", "run", "--config", str(config), "--listen",
                             f"{HOST}:{PORT}", "--state-dir", str(tmp / "state"), "--web.enable-admin-api"],
                            stdout=subprocess.DEVNULL, stderr=stderr, text=True, cwd=tmp)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp / "connmon.log").read_text(encoding="utf-8")[-3000:]
            with contextlib.suppress(OSError):
                if _request("GET", "/-/ready")[0] == 200:
                    break
            assert time.monotonic() < deadline, "the centre did not get ready"
            time.sleep(0.1)
        pools = {label: [_Site(site.name, site.token, _slot(site) if label in NEEDS_SLOT else None)
                         for site in sites] for label, sites in pools.items()}
        codes = [new_code() for _ in range(ENROL_SITES)]
        book = open_book(None, str(tmp / "state"))  # as `connmon agent-invite` does, one code per site
        try:
            now = time.time()
            for i, code in enumerate(codes):
                book.invite(f"st-enrol-{i}", code_hash(code), now, now + 86400.0)
        finally:
            book.close()
        yield Centre(proc, pools, _Site(small.name, small.token, _slot(small)), tmp / "state", codes)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        stderr.close()


# ------------------------------------------------------------------------------------------------ the tests
def _toml(value: object) -> str:
    return json.dumps(value)  # a JSON string or list is a TOML basic string or array


def test_schemathesis_finds_nothing_against_a_live_centre(centre: Centre, tmp_path: Path) -> None:
    """Every operation, every check, every phase: no failure, no error, no operation left untested."""
    report = tmp_path / "report.json"
    config = tmp_path / "schemathesis.toml"
    config.write_text(f"""
base-url = {_toml(centre.url(""))}
hooks = {_toml(str(Path(__file__).resolve()))}
workers = 1  # two threads generating at once trip CPython 3.11's ast.parse (SystemError)
request-timeout = 30
[cache]
enabled = false
[generation]
max-examples = {MAX_EXAMPLES}
deterministic = true
database = "none"
[checks.positive_data_acceptance]
expected-statuses = ["2xx"]
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "413", "415"]
[reports.json]
path = {_toml(str(report))}
[[operations]]
include-operation-id = "getSite"
[operations.checks.positive_data_acceptance]
expected-statuses = ["2xx", "404"]
[[operations]]
include-operation-id = "openMaintenance"
[operations.checks.positive_data_acceptance]
expected-statuses = ["2xx", "404"]
[[operations]]
include-operation-id = "closeMaintenance"
[operations.checks.positive_data_acceptance]
expected-statuses = ["2xx", "404"]
[[operations]]
include-operation-id = "enrolAgent"
[operations.checks.positive_data_acceptance]
expected-statuses = ["2xx", "403"]
""", encoding="utf-8")
    names = ["lo-1", "lo-2", "lo-soon", *(site.name for sites in centre.pools.values() for site in sites)]
    environment = {**os.environ, CONTEXT_ENV: json.dumps({
        "pools": {label: [site._asdict() for site in sites] for label, sites in centre.pools.items()},
        "names": names, "codes": centre.codes})}
    run = subprocess.run([str(Path(sys.executable).with_name("st")), "--config-file", str(config), "run",
                          "--checks", "all", "--continue-on-failure", "--no-color",
                          centre.url("/api/v1/openapi.yaml")],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path, env=environment, check=False)
    assert report.exists(), run.stdout[-5000:] + run.stderr[-5000:]
    result = json.loads(report.read_text(encoding="utf-8"))
    summary = (f"schemathesis {result['schemathesis_version']}: {result['operations']['tested']} of "
               f"{result['operations']['total']} operations, {result['test_cases']['generated']} cases, "
               f"{result['test_cases']['unique_failures']} unique failures, {len(result['errors'])} errors, "
               f"{result['running_time']:.0f}s")
    print(f"\n{summary}")
    failures = "\n".join(f"{f['code']} {f['title']} ({f['count']}): {', '.join(f['operations'])}"
                         for f in result["failures"])
    details = run.stdout[run.stdout.find("FAILURES"):][:30000] if "FAILURES" in run.stdout else run.stdout[-5000:]
    assert not result["failures"] and not result["errors"] and run.returncode == 0, \
        f"{summary}\n{failures}\n{details}\n{run.stderr[-3000:]}"
    # every operation but GET /api/v1/openapi.yaml, which serves the document schemathesis reads (it skips it)
    assert result["operations"]["tested"] == result["operations"]["total"] == 14, summary  # 2 more: issue 18's
    assert result["test_cases"]["generated"] > 0, summary
    warnings = result.get("warnings") or {}  # 429s would mean the pools are too small; 401/403s, no valid token
    assert not warnings.get("rate_limited") and not warnings.get("missing_auth"), (summary, warnings)
    assert centre.proc.poll() is None


def test_downloads_and_uploads_stay_within_the_grant(centre: Centre) -> None:
    """HEAD tells a download's size and spends nothing; GET without ``bytes`` sends all the grant still
    allows; beyond the grant a download or an upload gets 413; without a live slot 403."""
    site = centre.small
    auth = {"Authorization": f"Bearer {site.token}"}
    path = f"/api/v1/agent/download?slot={site.slot}"
    status, headers, body = _request("HEAD", path, headers=auth)
    assert (status, headers["content-length"], body) == (200, str(SMALL_GRANT_BYTES), b"")
    assert _request("GET", f"{path}&bytes={SMALL_GRANT_BYTES + 1}", headers=auth)[0] == 413
    status, headers, body = _request("GET", f"{path}&bytes=1000", headers=auth)
    assert (status, headers["content-type"], len(body)) == (200, "application/octet-stream", 1000)
    status, headers, _ = _request("HEAD", path, headers=auth)
    assert (status, headers["content-length"]) == (200, str(SMALL_GRANT_BYTES - 1000))
    status, headers, body = _request("GET", path, headers=auth)  # the rest of the grant
    assert (status, headers["content-length"], len(body)) == (200, str(SMALL_GRANT_BYTES - 1000),
                                                               SMALL_GRANT_BYTES - 1000)
    assert _request("GET", f"{path}&bytes=1", headers=auth)[0] == 413
    upload = f"/api/v1/agent/upload?slot={site.slot}"
    status, _, body = _request("POST", upload, b"x" * 5000, auth)
    assert (status, json.loads(body)) == (200, {"bytes": 5000})
    assert _request("POST", upload, b"x" * SMALL_GRANT_BYTES, auth)[0] == 413
    for method, where in (("GET", path), ("POST", upload)):
        for slot in ("unknown", centre.pools["GET /api/v1/agent/download"][0].slot):  # none, another site's
            status, _, body = _request(method, where.replace(str(site.slot), str(slot)), b"" if method == "POST"
                                       else None, auth)
            assert status == 403 and json.loads(body)["parameter"] == "slot", (method, slot, body)


@pytest.mark.parametrize(("query", "parameter"), [
    ({"from": "1969-12-31"}, "from"), ({"to": "3000-01-01"}, "to"), ({"from": "0590-09-12"}, "from"),
    ({"from": "2026-12-01", "to": "5000-01-01"}, "to"), ({"to": "2026-1-1"}, "to"), ({"timezone": ""}, "timezone"),
    ({"timezone": "x" * 201}, "timezone"), ({"kind": "a\u202eb"}, "kind"), ({"district": "\x85"}, "district"),
    ({"from": "2026-03-05", "to": "2026-03-04"}, "from"),
])
def test_summary_values_out_of_the_documents_range_are_malformed(query: dict[str, str], parameter: str) -> None:
    """400 naming the parameter, never 503: a period beyond the years 1970-2999 (the document's QueryDate)."""
    from monitor.web.site_api import QueryError, parse_summary_query

    with pytest.raises(QueryError) as err:
        parse_summary_query(query, "UTC", 1_796_550_000.0)
    assert err.value.parameter == parameter


def test_a_summary_given_one_end_is_never_reversed() -> None:
    """``to`` alone starts on the first day of its month; ``from`` alone ends today or on ``from``; both ends of
    the document's range are taken; a label of spaces is a (merely unknown) label."""
    from monitor.web.site_api import parse_summary_query

    now = dt.datetime(2026, 12, 6, 12, tzinfo=dt.UTC).timestamp()
    period = parse_summary_query({"to": "2020-02-10"}, "UTC", now).period
    assert (period.first, period.last) == (dt.date(2020, 2, 1), dt.date(2020, 2, 10))
    period = parse_summary_query({"from": "2999-12-31", "timezone": "Etc/GMT+12"}, "UTC", now).period
    assert (period.first, period.last) == (dt.date(2999, 12, 31), dt.date(2999, 12, 31))
    whole = parse_summary_query({"from": "1970-01-01", "to": "2999-12-31", "kind": "  "}, "UTC", now)
    assert whole.period.previous.first.year == 940 and whole.kind == "  "


def test_the_document_states_the_servers_limits() -> None:
    """The patterns, enums and numeric limits in the document are the constants the server checks with."""
    from monitor.agent import protocol
    from monitor.agent.site.throughput import REFUSAL_REASONS
    from monitor.errors import MEASURED_ICMP_REASONS, THROUGHPUT_REASONS
    from monitor.results import GAP_CAUSES
    from monitor.site_states import SITE_STATES
    from monitor.text import FREE_TEXT_PATTERN
    from monitor.web.site_api import OPENAPI_PATH
    from monitor.web.site_state import SITE_ICMP_REASONS

    document = yaml.safe_load(OPENAPI_PATH.read_text(encoding="utf-8"))
    schemas = document["components"]["schemas"]
    assert schemas["CleanName"]["pattern"] == schemas["CleanId"]["pattern"] == NAME_PATTERN
    assert schemas["FreeText"]["pattern"] == FREE_TEXT_PATTERN
    assert schemas["QueryDate"]["pattern"] == DATE_PATTERN
    assert (schemas["CleanName"]["maxLength"], schemas["CleanId"]["maxLength"]) == (200, 64)
    assert schemas["FreeText"]["maxLength"] == protocol.MAX_TEXT
    icmp, test = schemas["AgentIcmpResult"]["properties"], schemas["AgentThroughputResult"]["properties"]
    assert icmp["error"]["enum"] == [*(r.value for r in MEASURED_ICMP_REASONS), None]
    assert schemas["ThroughputReason"]["enum"] == [*(r.value for r in THROUGHPUT_REASONS), None]
    site_icmp = schemas["Site"]["properties"]["icmp"]["oneOf"][1]["properties"]
    assert site_icmp["error"]["enum"] == [*(r.value for r in SITE_ICMP_REASONS), None]
    assert schemas["Site"]["properties"]["state"]["enum"] == [s.value for s in SITE_STATES]
    results = document["paths"]["/api/v1/agent/results"]["post"]["responses"]["200"]
    gap = results["content"]["application/json"]["schema"]["properties"]["gap_cause"]
    assert gap["enum"] == [*GAP_CAUSES, None]
    assert icmp["path"]["enum"] == list(protocol.ICMP_PATHS)
    assert schemas["AgentBatch"]["properties"]["results"]["maxItems"] == protocol.MAX_RESULTS_PER_BATCH
    assert icmp["sent"]["maximum"] == icmp["rtts_seconds"]["maxItems"] == protocol.MAX_ECHOES
    assert icmp["rtts_seconds"]["items"]["maximum"] == protocol.MAX_RTT_SECONDS
    direction = test["directions"]["items"]["properties"]
    assert direction["bits_per_second"]["maximum"] == protocol.MAX_BITS_PER_SECOND
    assert direction["bytes"]["maximum"] == protocol.MAX_BYTES
    assert schemas["AgentSeq"]["maximum"] == MAX_SEQ
    assert document["components"]["parameters"]["DownloadBytes"]["schema"]["maximum"] == protocol.MAX_TEST_BYTES
    time_rule = schemas["AgentTime"]["description"]
    assert f"{protocol.MAX_FUTURE_SKEW_SECONDS:g} s ahead" in time_rule
    assert f"{protocol.MAX_AGE_SECONDS / 86400:g} days old" in time_rule
    assert f"{protocol.MAX_BODY_BYTES} bytes" in document["components"]["responses"]["BodyTooLarge"]["description"]
    assert f"{protocol.BODY_IDLE_SECONDS:g} s by default" in document["info"]["description"]
    from monitor.web import maintenance_api

    request = schemas["MaintenanceRequest"]["properties"]
    assert schemas["MaintenanceTime"]["oneOf"][1]["pattern"] == maintenance_api.TIME_PATTERN
    assert schemas["MaintenanceTime"]["oneOf"][0]["exclusiveMaximum"] == maintenance_api.LAST_TIME
    assert (request["reason"]["pattern"], request["reason"]["maxLength"]) == (FREE_TEXT_PATTERN,
                                                                              maintenance_api.MAX_REASON_LENGTH)
    assert request["kind"]["enum"] == list(maintenance_api.KINDS) and request["target"]["allOf"][0]["$ref"] \
        == "#/components/schemas/CleanName"
    delete = document["paths"]["/api/v1/maintenance/{id}"]["delete"]
    assert delete["parameters"][0]["schema"]["maximum"] == maintenance_api.MAX_ID
    assert schemas["SlotRefused"]["properties"]["reason"]["enum"] == list(REFUSAL_REASONS)


def test_agent_bodies_and_methods_are_answered_as_the_document_says(centre: Centre) -> None:
    """The rules on agent bodies that schemathesis cannot generate (a charset, a key twice, a lone surrogate),
    and 405 on the one path it skips (the document's own); each answer is one the document describes."""
    from openapi_core import OpenAPI
    from openapi_core.testing import MockRequest, MockResponse

    from monitor.web.site_api import OPENAPI_PATH

    spec = OpenAPI.from_file_path(str(OPENAPI_PATH))
    site = centre.small
    now = time.time()
    good = {"site": site.name, "agent": {"version": "0.1.0", "instance": "i1", "boot_id": "b1",
                                        "uptime_seconds": 10.0, "sent_at": now},
            "results": [{"seq": 1, "type": "icmp", "started_at": now - 5, "sent": 1, "rtts_seconds": [0.1]}]}
    text = json.dumps(good)
    cases = [
        ("text/plain", text.encode(), 415),
        ("application/json; charset=latin-1", text.encode(), 415),
        ("application/json", text.replace('"seq": 1', '"seq": 1, "seq": 2').encode(), 400),
        ("application/json", text.replace('"0.1.0"', '"0.1.0\\ud800"').encode(), 400),
        ("application/json", text.replace('"i1"', '"i1\\u0085"').encode(), 400),
        ("application/json", text.encode("utf-16"), 400),
        ("application/json; charset=utf-8", text.encode(), 200),
    ]
    for content_type, body, expected in cases:
        status, headers, answer = _request("POST", "/api/v1/agent/results", body,
                                           {"Authorization": f"Bearer {site.token}", "Content-Type": content_type})
        assert status == expected, (content_type, body[:80], answer)
        spec.validate_response(
            MockRequest(centre.url(""), "post", "/api/v1/agent/results", data=body, content_type=content_type),
            MockResponse(answer, status_code=status, content_type=headers["content-type"].split(";")[0],
                         headers=headers))
    for method, path in (("POST", "/api/v1/openapi.yaml"), ("DELETE", "/api/v1/agent/results"),
                         ("PUT", "/api/v1/agent/download"), ("GET", "/api/v1/agent/upload")):
        status, headers, _ = _request(method, path)
        assert status == 405 and headers["allow"], (method, path)
