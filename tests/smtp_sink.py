"""A local SMTP sink for tests: a real SMTP server on loopback that keeps every message it is given.

Enough of RFC 5321 for Alertmanager's Go client: EHLO/HELO (advertising ``AUTH PLAIN``), AUTH PLAIN
(the credentials are kept, so a test can see the password file was read), MAIL, RCPT, DATA with dot
unstuffing, RSET, NOOP, QUIT. No STARTTLS: the test's copy of the config sets ``smtp_require_tls:
false``, and Go sends PLAIN unencrypted only to localhost.
"""

from __future__ import annotations

import base64
import socketserver
import threading
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser


@dataclass
class Delivery:
    """One message as received: the envelope, the credentials it logged in with, the parsed message."""

    sender: str
    recipients: list[str]
    credentials: tuple[str, str] | None
    message: EmailMessage


@dataclass
class SmtpSink:
    """Serves on ``address:port`` in a thread until :meth:`close`; :attr:`deliveries` fills as mail arrives."""

    address: str
    port: int
    deliveries: list[Delivery] = field(default_factory=list)

    def __post_init__(self) -> None:
        sink = self

        class Session(socketserver.StreamRequestHandler):
            def reply(self, line: str) -> None:
                self.wfile.write(line.encode("ascii") + b"\r\n")
                self.wfile.flush()

            def handle(self) -> None:
                sender, recipients, credentials = "", [], None
                self.reply("220 sink.test ESMTP")
                while True:
                    raw = self.rfile.readline()
                    if not raw:
                        return
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    verb = line.split(" ", 1)[0].upper()
                    if verb == "EHLO":
                        self.reply("250-sink.test")
                        self.reply("250-8BITMIME")
                        self.reply("250 AUTH PLAIN")
                    elif verb == "HELO":
                        self.reply("250 sink.test")
                    elif verb == "AUTH":
                        parts = line.split()
                        encoded = parts[2] if len(parts) > 2 else ""
                        if not encoded:
                            self.reply("334 ")
                            encoded = self.rfile.readline().decode("ascii").strip()
                        _, user, password = base64.b64decode(encoded).decode("utf-8").split("\0")
                        credentials = (user, password)
                        self.reply("235 2.7.0 accepted")
                    elif verb == "MAIL":
                        sender, recipients = line.split(":", 1)[1].split()[0].strip("<>"), []
                        self.reply("250 OK")
                    elif verb == "RCPT":
                        recipients.append(line.split(":", 1)[1].strip().strip("<>"))
                        self.reply("250 OK")
                    elif verb == "DATA":
                        self.reply("354 go ahead")
                        body = bytearray()
                        while True:
                            chunk = self.rfile.readline()
                            if chunk in (b".\r\n", b".\n", b""):
                                break
                            body += chunk[1:] if chunk.startswith(b"..") else chunk
                        message = BytesParser(policy=policy.default).parsebytes(bytes(body))
                        sink.deliveries.append(Delivery(sender, recipients, credentials,
                                                        message))  # type: ignore[arg-type]
                        self.reply("250 OK queued")
                    elif verb in ("RSET", "NOOP"):
                        self.reply("250 OK")
                    elif verb == "QUIT":
                        self.reply("221 bye")
                        return
                    else:
                        self.reply("502 not here")

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self._server = socketserver.ThreadingTCPServer((self.address, self.port), Session)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
