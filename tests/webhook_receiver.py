"""A webhook receiver for Alertmanager in tests: every POST body is appended, as one JSON line, to a file.

Run as ``python -m tests.webhook_receiver ADDRESS PORT FILE`` (inside the lab's centre namespace,
where Alertmanager runs). Each line is ``{"path": "/hook/network", "body": {...}}``: the path says
which receiver of the shipped ``alertmanager.yml`` the notification was routed to.
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def serve(address: str, port: int, out: Path) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"null")
            with out.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"path": self.path, "body": body}) + "\n")
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
            return

    ThreadingHTTPServer((address, port), Handler).serve_forever()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
