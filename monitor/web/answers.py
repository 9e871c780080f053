"""JSON answers of the HTTP edge, one encoding for the site API and the agents' routes.

Conventions (``/api/v1``): UTF-8 JSON, errors as ``{"error": ..., "parameter": ...}``. Any text a
site brought in is written safely: a lone surrogate becomes U+FFFD (issue 24), so one site's odd
data never turns an answer for every site into a 500.
"""

from __future__ import annotations

import json

from aiohttp import web

from monitor.text import scalar_text

JSON_CONTENT_TYPE = "application/json"


def json_response(data: object, status: int = 200) -> web.Response:
    """``data`` as JSON in UTF-8; a lone surrogate in one site's text becomes U+FFFD instead of a 500 for all."""
    return json_text_response(json.dumps(data, ensure_ascii=False, allow_nan=False), status)


def json_text_response(text: str, status: int = 200) -> web.Response:
    """JSON already dumped (in a worker thread, say), encoded as :func:`json_response` does."""
    try:
        body = text.encode("utf-8")
    except UnicodeEncodeError:  # issue 24: odd text that came from outside (it is refused at the edge too)
        body = scalar_text(text).encode("utf-8")
    return web.Response(status=status, body=body, content_type=JSON_CONTENT_TYPE, charset="utf-8")


def error_response(status: int, message: str, parameter: str | None = None) -> web.Response:
    return json_response({"error": message, "parameter": parameter}, status)
