"""Splice an HBONE stream and a TCP socket, both directions, with half-close.

Callback-driven (no task per direction, no wake-up per chunk): TCP reads go straight
into the stream; stream data goes straight to the TCP transport. Backpressure runs
both ways: a full stream pauses TCP reading; a full TCP write buffer withholds
HTTP/2 flow-control credit. TCP FIN <-> END_STREAM; a reset on either side becomes
a reset (RST / RST_STREAM) on the other."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from dataclasses import dataclass
from typing import cast

from mesh.hbone.errors import HboneStreamReset
from mesh.hbone.stream import HboneStream

_LINGER_RST = struct.pack("ii", 1, 0)
# Reads this big go to TLS straight from the read buffer, each flushed at once (a TLS
# record per 16 KiB anyway); smaller ones are copied and may wait to be batched.
IN_PLACE_MIN = 16 * 1024


def reset_socket(sock: socket.socket) -> None:
    """Close with RST instead of FIN: how a refused tunnel is reported to the client app."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    sock.close()


@dataclass(frozen=True)
class RelayResult:
    to_stream: int
    from_stream: int
    reset: bool
    # of from_stream: bytes written to the socket straight from the tunnel's read buffer
    from_stream_in_place: int = 0


class _TcpSide(asyncio.BufferedProtocol):
    """The TCP half of a relay; also the stream's sink."""

    def __init__(self, stream: HboneStream, done: asyncio.Future[None],
                 read_buffer: int | None) -> None:
        self.stream = stream
        self.done = done
        self._view = memoryview(bytearray(read_buffer)) if read_buffer else stream.scratch
        self.transport: asyncio.Transport | None = None
        self.tcp_eof = False
        self.stream_eof = False
        self.was_reset = False
        self.to_stream = 0
        self.from_stream = 0
        self.written_in_place = 0  # of from_stream: sent from the tunnel's buffer, no copy
        self._fd = -1

    # ---- TCP side ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        self._fd = sock.fileno() if sock is not None else -1
        self.stream.set_write_callbacks(transport.pause_reading, transport.resume_reading)
        self.stream.attach_sink(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self.to_stream += nbytes
        try:
            if nbytes >= IN_PLACE_MIN:  # encrypted from this buffer, no copy
                self.stream.write_transient(self._view[:nbytes])
            else:  # small: copied, so a burst of them can share one TLS record
                self.stream.write(bytes(self._view[:nbytes]))
        except HboneStreamReset:
            self.reset_tcp()

    def eof_received(self) -> bool:
        self.tcp_eof = True
        self.stream.write_eof()
        self._maybe_close()
        return True  # keep the socket open: the other direction may still flow

    def pause_writing(self) -> None:
        self.stream.pause_receiving()

    def resume_writing(self) -> None:
        self.stream.resume_receiving()

    def connection_lost(self, exc: Exception | None) -> None:
        if not (self.tcp_eof and self.stream_eof) and not self.was_reset:
            self.was_reset = True
            self.stream.reset()
        if not self.done.done():
            self.done.set_result(None)

    # ---- stream sink ------------------------------------------------------------------

    def data(self, data: bytes | memoryview) -> None:
        """`data` may be a view of the tunnel's read buffer (reused once this returns).
        With nothing queued in the transport it goes to the socket from there, without
        a copy; what the socket does not take now is copied into the transport, which
        sends it (and what follows) in order."""
        self.from_stream += len(data)
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._fd >= 0 and not transport.get_write_buffer_size():
            try:
                sent = os.write(self._fd, data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                transport.write(bytes(data))  # the transport sees the error and reports it
                return
            self.written_in_place += sent
            if sent == len(data):
                return
            data = data[sent:]
        transport.write(bytes(data))

    def eof(self) -> None:
        self.stream_eof = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write_eof()
        self._maybe_close()

    def reset(self, error: HboneStreamReset) -> None:
        self.reset_tcp()

    def reset_tcp(self) -> None:
        self.was_reset = True
        if self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, ValueError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        self.transport.abort()

    def _maybe_close(self) -> None:
        if self.tcp_eof and self.stream_eof and self.transport is not None:
            self.transport.close()  # flushes what is buffered, then closes


async def relay(stream: HboneStream, sock: socket.socket, *,
                read_buffer: int | None = None) -> RelayResult:
    """Relay until both directions ended (or either side reset); closes `sock`.

    TCP reads land in the tunnel connection's read buffer, shared by all its relays
    and by its own TLS reads: every read is copied out before the callback returns
    (one thread, one callback at a time), so 1000 relays cost one buffer, not 1000
    (256 MB). `read_buffer` gives this relay a private buffer of that size instead."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    side = _TcpSide(stream, done, read_buffer)
    sock.setblocking(False)
    try:
        await loop.connect_accepted_socket(lambda: side, sock)
    except OSError:
        reset_socket(sock)
        stream.reset()
        raise
    try:
        await done
    except asyncio.CancelledError:
        side.reset_tcp()
        stream.reset()
        raise
    return RelayResult(side.to_stream, side.from_stream, side.was_reset,
                       side.written_in_place)
