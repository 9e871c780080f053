"""A stand-in centre for the agent's own tests: the agent API's wire behaviour, with answers the test controls.

    python tests/agent_centre_stub.py --port P --token-sha256 HEX --state DIR

The real centre (``connmon run`` with a ``mode: agent`` site) is tested end to end elsewhere;
this stub lets the agent's tests provoke what the real centre rarely says (400, 413, 429 with
Retry-After, 503) and see exactly what the agent sent. It keeps, in ``DIR``:

* ``batches.jsonl``: every results POST it answered 200, one JSON line each
  (``{"received_at": T, "body": ...}``), and answers ``{"accepted", "duplicates", "last_seq"}``;
* ``answer.json`` (written by the test, optional): ``{"status": 503, "retry_after": "7", "body": {...}}``
  makes every results POST get that answer instead, until the file is removed (``"hang": true``:
  no answer at all);
* ``grant.json`` (written by the test, optional): the next slot request gets this grant once
  (the file is then renamed ``grant.used.json``); otherwise ``{"granted": false, "reason": "not_due"}``;
* ``slots.jsonl``: every slot request, and ``transfers.jsonl``: every download/upload (slot, bytes).

The download and upload endpoints check the token and the slot and count bytes; they are the
centre's HTTP test endpoints' contract. A stand-alone script (no project import), like http_site.py.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

from aiohttp import web

CHUNK = 64 * 1024
POOL = os.urandom(16 * CHUNK)
CHUNKS = [POOL[i:i + CHUNK] for i in range(0, len(POOL), CHUNK)]


def append(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as file:
        file.write(json.dumps(record) + "\n")


def make_app(token_sha256: str, state: Path) -> web.Application:
    seen: set[tuple[str, int]] = set()
    slots: set[str] = set()

    def authorised(request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ").strip()
        return header.startswith("Bearer ") and hashlib.sha256(token.encode()).hexdigest() == token_sha256

    async def results(request: web.Request) -> web.Response:
        if not authorised(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        body = await request.json()
        override = state / "answer.json"
        if override.exists():
            answer = json.loads(override.read_text())
            headers = {"Retry-After": answer["retry_after"]} if "retry_after" in answer else {}
            append(state / "refused.jsonl", {"received_at": time.time(), "status": answer["status"], "body": body})
            if answer.get("hang"):  # a centre (or a path) that takes the request and never answers
                await asyncio.sleep(3600)
            return web.json_response(answer.get("body", {"error": "refused"}), status=answer["status"],
                                     headers=headers)
        instance = body["agent"]["instance"]
        fresh = [r for r in body["results"] if (instance, r["seq"]) not in seen]
        seen.update((instance, r["seq"]) for r in body["results"])
        append(state / "batches.jsonl", {"received_at": time.time(), "body": body})
        last = max((r["seq"] for r in body["results"]), default=0)
        return web.json_response({"accepted": len(fresh), "duplicates": len(body["results"]) - len(fresh),
                                  "last_seq": last})

    async def slot(request: web.Request) -> web.Response:
        if not authorised(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        body = await request.json()
        append(state / "slots.jsonl", {"received_at": time.time(), "body": body})
        grant = state / "grant.json"
        if grant.exists():
            answer = json.loads(grant.read_text())
            grant.rename(state / "grant.used.json")
            slots.add(answer["slot"])
            return web.json_response(answer)
        return web.json_response({"granted": False, "retry_after_seconds": 2, "reason": "not_due"})

    def check_slot(request: web.Request) -> str:
        if not authorised(request):
            raise web.HTTPUnauthorized(text="unauthorized")
        slot_id = request.query.get("slot", "")
        if slot_id not in slots:
            raise web.HTTPForbidden(text=f"no such slot {slot_id!r}")
        return slot_id

    async def download(request: web.Request) -> web.StreamResponse:
        slot_id = check_slot(request)
        total = int(request.query["bytes"])
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = total
        await response.prepare(request)
        sent = 0
        try:
            for chunk in itertools.cycle(CHUNKS):
                if sent >= total:
                    break
                chunk = chunk[:total - sent]
                await response.write(chunk)
                sent += len(chunk)
        except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
            append(state / "transfers.jsonl", {"slot": slot_id, "direction": "download", "bytes": sent})
            return response
        append(state / "transfers.jsonl", {"slot": slot_id, "direction": "download", "bytes": sent})
        await response.write_eof()
        return response

    async def upload(request: web.Request) -> web.Response:
        slot_id = check_slot(request)
        count = 0
        async for chunk in request.content.iter_any():
            count += len(chunk)
        append(state / "transfers.jsonl", {"slot": slot_id, "direction": "upload", "bytes": count})
        return web.json_response({"bytes": count})

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_post("/api/v1/agent/results", results)
    app.router.add_post("/api/v1/agent/slot", slot)
    app.router.add_get("/api/v1/agent/download", download)
    app.router.add_post("/api/v1/agent/upload", upload)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token-sha256", required=True)
    parser.add_argument("--state", required=True)
    args = parser.parse_args()
    web.run_app(make_app(args.token_sha256, Path(args.state)), port=args.port, access_log=None, print=None,
                handle_signals=True, shutdown_timeout=1)


if __name__ == "__main__":
    main()
