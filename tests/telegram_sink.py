"""A fake Telegram Bot API for tests: an HTTP server on loopback that keeps every call Alertmanager makes.

Alertmanager's Telegram notifier (telebot) POSTs JSON to ``<api_url>/bot<TOKEN>/<method>``; for
``sendMessage`` the real API answers ``{"ok": true, "result": <the Message>}``, and for a wrong token
``401 {"ok": false, "error_code": 401, "description": "Unauthorized"}``. This sink answers the same
way, and only to the token it was given, so a test sees both that the token reached the URL (read from
``bot_token_file``) and what was sent. ``getMe`` is answered too, in case a client checks its bot first.
Every request, answered or refused, is kept in :attr:`TelegramSink.calls`.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Call:
    """One request: its path (``/bot<TOKEN>/sendMessage``), the Bot API method, the JSON body."""

    path: str
    method: str
    body: dict[str, Any]


@dataclass
class TelegramSink:
    """Serves on ``address:port`` in a thread until :meth:`close`, accepting ``token`` only."""

    address: str
    port: int
    token: str
    calls: list[Call] = field(default_factory=list)

    def __post_init__(self) -> None:
        sink = self
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def answer(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                body = json.loads(raw.decode("utf-8")) if raw else {}
                prefix, _, method = self.path.rpartition("/")
                with lock:
                    sink.calls.append(Call(self.path, method, body))
                    message_id = len(sink.calls)
                if prefix != f"/bot{sink.token}":
                    self.answer(401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
                elif method == "getMe":
                    self.answer(200, {"ok": True, "result": {"id": 1, "is_bot": True, "first_name": "connmon",
                                                            "username": "connmon_test_bot"}})
                elif method == "sendMessage":
                    chat_id = int(body["chat_id"])
                    self.answer(200, {"ok": True, "result": {
                        "message_id": message_id, "date": int(time.time()),
                        "from": {"id": 1, "is_bot": True, "first_name": "connmon", "username": "connmon_test_bot"},
                        "chat": {"id": chat_id, "type": "supergroup", "title": "team"},
                        "text": body.get("text", "")}})
                else:
                    self.answer(404, {"ok": False, "error_code": 404, "description": "Not Found"})

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
                return

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer((self.address, self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def messages(self) -> list[Call]:
        """The ``sendMessage`` calls made with the right token, in the order they came."""
        return [c for c in list(self.calls) if c.method == "sendMessage" and c.path == f"/bot{self.token}/sendMessage"]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
