"""The site API's OpenAPI document, loaded once, for tests that validate requests and answers against it."""

from __future__ import annotations

from openapi_core import OpenAPI

from monitor.web.site_api import OPENAPI_PATH

SPEC = OpenAPI.from_file_path(str(OPENAPI_PATH))
