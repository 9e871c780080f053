"""The listen address: default port and ``ADDR:PORT`` parsing, kept apart from the web server.

Separate so that ``connmon check`` and ``connmon probe`` can validate ``--listen`` without
importing aiohttp (~175 ms of start-up CPU).
"""

from __future__ import annotations

DEFAULT_PORT = 9077  # outside 9100-9999, which the Prometheus default-port allocations page has filled
DEFAULT_LISTEN = f":{DEFAULT_PORT}"


def parse_listen(text: str) -> tuple[str | None, int]:
    """``:9077`` (all interfaces), ``127.0.0.1:9077`` or ``[::1]:9077`` → (host or None, port).

    Raises:
        ValueError: when the text is not ADDR:PORT.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"--listen {text!r}: expected ADDR:PORT, e.g. :{DEFAULT_PORT} or 127.0.0.1:{DEFAULT_PORT}")
    host = host.strip("[]")
    return (host or None), int(port_text)
