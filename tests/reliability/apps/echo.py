"""An asyncio echo server for load tests (stdlib only): echoes until EOF, then closes.

Usage: python echo.py PORT
"""

from __future__ import annotations

import asyncio
import sys


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    servers = [await asyncio.start_server(echo, host, port, backlog=4096)
               for host in ("0.0.0.0", "::")]
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
