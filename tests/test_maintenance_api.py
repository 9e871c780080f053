"""``/api/v1/maintenance`` on a running daemon (issue 21): a window opened on a site and on an upstream node,
shown by the API and /metrics, closed early, kept across a restart; every bad request answered with the status and
the field the OpenAPI document names; writes refused without ``--web.enable-admin-api`` or a history.

The daemon probes loopback sites only (127.0.0.0/8) and listens on 127.0.0.1; the scenario with a silent site and
a real iperf3 server is tests/test_maintenance_netns.py's.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from openapi_core.testing import MockRequest, MockResponse

from tests.api_spec import SPEC
from tests.basic_auth import HASH, PASSWORD, basic
from tests.factories import write_config
from tests.running import samples, value

HOST = "127.0.0.1"
PORT = 19960  # this module's range: 19960-19962
AUTH = {"Authorization": basic("ops", PASSWORD)}
JSON = {"Content-Type": "application/json"}
SOON = time.time() + 3600.0


def config(tmp: Path) -> Path:
    return write_config(tmp, """
defaults:
  icmp: {interval: 1s, count: 2, spacing: 50ms, timeout: 300ms}
upstreams:
  - {name: agg, host: 127.0.0.9, kind: router}
groups:
  - name: loop
    kind: school
    district: Aktobe
    endpoints:
      - {name: "Школа №1", host: 127.0.0.2}
      - {name: behind, host: 127.0.0.3, upstream: agg}
      - {name: beside, host: 127.0.0.4}
""")


def request(method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            port: int = PORT) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def checked(method: str, path: str, body: object = None, headers: dict[str, str] | None = None, *,
            raw: bytes | None = None, port: int = PORT) -> tuple[int, object]:
    """One request, its answer validated against the OpenAPI document (status, content type, body)."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    status, got, answer = request(method, path, data, {**AUTH, **JSON, **(headers or {})}, port)
    content_type = got.get("content-type", "").split(";")[0]
    SPEC.validate_response(MockRequest(f"http://{HOST}", method.lower(), path),
                           MockResponse(answer, status_code=status, content_type=content_type, headers=got))
    return status, json.loads(answer) if content_type == "application/json" else answer.decode()


def post(body: object, **kw: object) -> tuple[int, dict]:
    status, answer = checked("POST", "/api/v1/maintenance", body, **kw)  # type: ignore[arg-type]
    assert isinstance(answer, dict)
    return status, answer


@contextlib.contextmanager
def daemon(cfg: Path, state: Path | None, *extra: str, port: int = PORT,
           web: Path | None = None) -> Iterator[subprocess.Popen[str]]:
    argv = [sys.executable, "-m", "monitor", "run", "--config", str(cfg), "--listen", f"{HOST}:{port}",
            *(["--state-dir", str(state)] if state is not None else ["--no-history"]),
            *(["--web.config.file", str(web)] if web is not None else []), *extra]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            with contextlib.suppress(OSError):
                if request("GET", "/-/ready", headers=AUTH, port=port)[0] == 200:
                    break
            assert time.monotonic() < deadline, "the daemon did not get ready"
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def until(condition: object, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def site_state(name: str) -> str:
    status, answer = checked("GET", "/api/v1/sites/" + urllib.parse.quote(name))
    assert status == 200 and isinstance(answer, dict)
    return str(answer["state"])


def metrics() -> dict:
    return samples(request("GET", "/metrics", headers=AUTH)[2].decode())


def send_in_pieces(body: bytes, pieces: int = 3) -> tuple[int, bytes]:
    """POST ``body`` over a raw socket in ``pieces`` TCP segments 50 ms apart (the way a slow link delivers it)."""
    head = (f"POST /api/v1/maintenance HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Authorization: {AUTH['Authorization']}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    with socket.create_connection((HOST, PORT), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(head.encode())
        step = len(body) // pieces + 1
        for start in range(0, len(body), step):
            time.sleep(0.05)
            sock.sendall(body[start:start + step])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    tmp = tmp_path_factory.mktemp("maintenance-api")
    web = tmp / "web.yml"
    web.write_text(f"basic_auth_users:\n  ops: {HASH}\n", encoding="utf-8")
    return config(tmp), tmp / "state", web


def test_windows_open_show_close_and_survive_a_restart(files: tuple[Path, Path, Path]) -> None:
    """A site window and an upstream node's window hold their sites (state, /metrics, the list), a body sent in
    pieces is read whole, a window closed early ends, and after a restart the open one is still there."""
    cfg, state, web = files
    with daemon(cfg, state, "--web.enable-admin-api", web=web):
        assert request("POST", "/api/v1/maintenance", b"{}", JSON)[0] == 401  # basic auth guards writes too
        until(lambda: site_state("beside") == "up")
        status, answer = checked("GET", "/api/v1/maintenance")
        assert status == 200 and answer["windows"] == [] and answer["sites_in_maintenance"] == []  # type: ignore
        now = time.time()
        status, site = post({"target": "Школа №1", "ends_at": now + 3600, "reason": "замена \u200fشبكة\u200f"})
        assert status == 201 and site["kind"] == "site" and site["open"] and site["closed_at"] is None
        assert abs(site["starts_at"] - now) < 5 and site["reason"] == "замена \u200fشبكة\u200f"
        body = json.dumps({"target": "agg", "kind": "upstream", "starts_at": now - 60,
                           "ends_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 7200)),
                           "reason": "core switch swap"}).encode()
        status, raw = send_in_pieces(body)
        node = json.loads(raw)
        assert status == 201 and node["kind"] == "upstream" and node["id"] != site["id"], raw
        until(lambda: site_state("Школа №1") == "maintenance" and site_state("behind") == "maintenance")
        assert site_state("beside") == "up"
        until(lambda: value(metrics(), "connmon_maintenance", endpoint="behind") == 1)  # at the next cycle
        parsed = metrics()
        assert value(parsed, "connmon_maintenance", endpoint="behind") == 1
        assert value(parsed, "connmon_maintenance", endpoint="beside") == 0
        assert value(parsed, "connmon_site_state", endpoint="behind", state="maintenance") == 1
        assert value(parsed, "connmon_maintenance_windows", kind="site") == 1
        assert value(parsed, "connmon_maintenance_windows", kind="upstream") == 1
        status, listed = checked("GET", "/api/v1/maintenance")
        assert [w["id"] for w in listed["windows"]] == [node["id"], site["id"]]  # type: ignore[index]
        held = {s["site"]: s["window"] for s in listed["sites_in_maintenance"]}  # type: ignore[index]
        assert set(held) == {"Школа №1", "behind"} and held["behind"].startswith(f"#{node['id']} on upstream agg")
        status, closed = checked("DELETE", f"/api/v1/maintenance/{site['id']}")
        assert status == 200 and closed["closed_at"] is not None and not closed["open"]  # type: ignore[index]
        status, again = checked("DELETE", f"/api/v1/maintenance/{site['id']}")
        assert status == 200 and again == closed  # its first close stays
        until(lambda: site_state("Школа №1") == "up")
    with daemon(cfg, state, "--web.enable-admin-api", web=web):
        status, listed = checked("GET", "/api/v1/maintenance")
        assert [w["id"] for w in listed["windows"]] == [node["id"]]  # type: ignore[index]
        until(lambda: site_state("behind") == "maintenance")  # from the first moment: restored before probing
        until(lambda: site_state("Школа №1") == "up")


@pytest.fixture(scope="module")
def admin_port(files: tuple[Path, Path, Path]) -> Iterator[int]:
    """A daemon of its own for the bad requests, with the admin API and basic auth; its port."""
    cfg, state, web = files
    with daemon(cfg, state.with_name("state-bad"), "--web.enable-admin-api", web=web, port=PORT + 1):
        yield PORT + 1


@pytest.mark.parametrize(("body", "status", "parameter"), [
    ({"target": "nobody", "ends_at": SOON, "reason": "x"}, 404, "target"),
    ({"target": "agg", "ends_at": SOON, "reason": "x"}, 404, "target"),  # a node, named as a site
    ({"target": "beside", "kind": "upstream", "ends_at": SOON, "reason": "x"}, 404, "target"),
    ({"target": "beside", "ends_at": SOON, "reason": "x", "extra": 1}, 400, "extra"),
    ({"target": "beside", "ends_at": SOON}, 400, "reason"),
    ({"target": "beside", "ends_at": 1000.0, "reason": "x"}, 400, "ends_at"),
    ({"target": "beside", "starts_at": SOON + 60, "ends_at": SOON, "reason": "x"}, 400, "ends_at"),
    ({"target": "beside", "ends_at": 9e9, "reason": "x"}, 400, "ends_at"),  # over 366 days
    ({"target": "beside", "ends_at": "2027-02-30T00:00:00Z", "reason": "x"}, 400, "ends_at"),
    ({"target": "beside", "ends_at": "next tuesday", "reason": "x"}, 400, "ends_at"),
    ({"target": "be\u202eside", "ends_at": SOON, "reason": "x"}, 400, "target"),
    ({"target": "beside", "ends_at": SOON, "reason": "x" * 501}, 400, "reason"),
    ({"target": "beside", "ends_at": SOON, "reason": "two\nlines"}, 400, "reason"),
    (["beside"], 400, None),
])
def test_a_bad_window_is_refused_naming_the_field(admin_port: int, body: object, status: int,
                                                  parameter: str | None) -> None:
    """Each wrong field is a 400 (or 404 for a target no site or node has) that names it, as documented."""
    got, answer = post(body, port=admin_port)
    assert (got, answer["parameter"]) == (status, parameter), answer


def test_bodies_that_are_not_clean_json_are_refused(admin_port: int) -> None:
    """A lone surrogate, a key twice, NaN, bytes that are not UTF-8 or not JSON: 400; another content type 415;
    a body over 16 KiB 413; an id that is no id 400, one no window has 404."""
    good = f'{{"target": "beside", "ends_at": {SOON}, "reason": "x"}}'
    for raw, expected in ((good.replace('"x"', '"\\ud800"'), 400), (good.replace('"x"', '"x", "reason": "y"'), 400),
                          (good.replace(str(SOON), "NaN"), 400), ("{\"target\": \"\xff\"}", 400), ("{", 400),
                          (good.replace('"x"', '"' + "x" * 17_000 + '"'), 413)):
        status, answer = checked("POST", "/api/v1/maintenance", raw=raw.encode("utf-8", "surrogatepass")
                                 if "\xff" not in raw else raw.encode("latin-1"), port=admin_port)
        assert status == expected, (raw[:60], answer)
    status, _ = checked("POST", "/api/v1/maintenance", raw=good.encode(), headers={"Content-Type": "text/plain"},
                        port=admin_port)
    assert status == 415
    for path, expected in (("0", 400), ("-3", 400), ("x", 400), ("99999999999999999999", 400), ("4242", 404)):
        status, answer = checked("DELETE", f"/api/v1/maintenance/{path}", port=admin_port)
        assert (status, answer["parameter"]) == (expected, "id"), (path, answer)  # type: ignore[index]


def test_writes_need_the_admin_api_and_a_history(tmp_path: Path) -> None:
    """Without ``--web.enable-admin-api`` a write is 403 (reads still answer); without a history, 503."""
    cfg = config(tmp_path)
    port = PORT + 2
    body = {"target": "beside", "ends_at": time.time() + 600, "reason": "x"}
    with daemon(cfg, tmp_path / "state", port=port):
        assert checked("POST", "/api/v1/maintenance", body, port=port)[0] == 403
        assert checked("DELETE", "/api/v1/maintenance/1", port=port)[0] == 403
        assert checked("GET", "/api/v1/maintenance", port=port)[0] == 200
    with daemon(cfg, None, "--web.enable-admin-api", port=port):
        status, answer = checked("POST", "/api/v1/maintenance", body, port=port)
        assert status == 503 and "history" in answer["error"]  # type: ignore[index]
