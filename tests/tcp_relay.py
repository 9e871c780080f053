"""A TCP relay for the proxy tests (issue 20): accept at once, then connect onward and copy both ways.

    python tests/tcp_relay.py --listen-port 19531 --to 10.220.11.2:19521

Run in a router namespace behind an iptables REDIRECT, it stands in for a satellite link's
performance-enhancing proxy: the client's handshake is answered by the router, before any packet
could have reached the site. A stand-alone script (no import of the project), like tests/http_site.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        writer.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen-port", type=int, required=True)
    parser.add_argument("--to", required=True)
    args = parser.parse_args()
    host, port = args.to.rsplit(":", 1)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(serve, "0.0.0.0", args.listen_port)  # noqa: S104 - inside a test namespace
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
