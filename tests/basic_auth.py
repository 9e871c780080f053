"""Basic auth for tests of the web config: one user's password, its bcrypt hash, and the header."""

from __future__ import annotations

import base64

import bcrypt

PASSWORD = "s3cret: with colon, ünïcode"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()  # cost 4: fast tests, same code path


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
