"""Copy bytes both ways between two TCP sockets until both directions have finished,
propagating half-close (FIN) each way. (Socket <-> HBONE stream uses mesh.hbone.relay.)

Returns the byte counts for telemetry. A failure in one direction cancels the other:
the connection's task group owns both copies.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass

READ_SIZE = 256 * 1024


@dataclass
class Transfer:
    request_bytes: int = 0
    response_bytes: int = 0


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                transfer: Transfer, request: bool) -> None:
    while True:
        try:
            data = await reader.read(READ_SIZE)
        except ConnectionResetError:
            data = b""
        if not data:
            if writer.can_write_eof() and not writer.is_closing():
                with contextlib.suppress(OSError):
                    writer.write_eof()
            return
        writer.write(data)
        await writer.drain()
        if request:
            transfer.request_bytes += len(data)
        else:
            transfer.response_bytes += len(data)


async def relay_sockets(client: socket.socket, server: socket.socket,
                        transfer: Transfer | None = None) -> Transfer:
    """Relay until both sides are done, then close both sockets."""
    transfer = transfer if transfer is not None else Transfer()
    c_reader, c_writer = await asyncio.open_connection(sock=client, limit=READ_SIZE)
    s_reader, s_writer = await asyncio.open_connection(sock=server, limit=READ_SIZE)
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_pump(c_reader, s_writer, transfer, request=True))
            tg.create_task(_pump(s_reader, c_writer, transfer, request=False))
    finally:
        for writer in (c_writer, s_writer):
            writer.close()
    return transfer
