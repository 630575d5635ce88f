"""One HBONE stream: a bidirectional byte stream tunnelled in an HTTP/2 CONNECT.

Two ways to use it, both with backpressure through HTTP/2 flow control:
- coroutines (anyio ByteStream): `send`, `receive`, `send_eof`, `aclose`;
- callbacks, for relays that move bytes without a task wake-up per chunk:
  `write` + `set_write_callbacks` (pause/resume like an asyncio transport) and
  `attach_sink` + `pause_receiving`/`resume_receiving`.
Half-close: `send_eof` sends END_STREAM; the peer's END_STREAM ends `receive`."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import anyio
import anyio.abc

from mesh.hbone.errors import HboneStreamReset, HboneTunnelError
from mesh.hbone.framing import CANCEL
from mesh.identity.spiffe import SpiffeId

if TYPE_CHECKING:
    from mesh.hbone.connection import HboneConnection

DEFAULT_RECEIVE = 4 * 1024 * 1024


class StreamSink(Protocol):
    """Receives a stream's inbound bytes as they arrive (callback mode). `data` may be
    a view of the connection's read buffer: consume or copy it before returning."""

    def data(self, data: bytes | memoryview) -> None: ...

    def eof(self) -> None: ...

    def reset(self, error: HboneStreamReset) -> None: ...


class HboneStream(anyio.abc.ByteStream):
    def __init__(self, conn: HboneConnection, stream_id: int, authority: str,
                 peer_identity: SpiffeId | None, high_water: int) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self.authority = authority
        self.peer_identity = peer_identity
        self._high_water = high_water
        # inbound
        self._chunks: deque[tuple[bytes, int]] = deque()
        self._recv_eof = False
        self._error: HboneStreamReset | None = None
        self._recv_waiter: asyncio.Future[None] | None = None
        self._sink: StreamSink | None = None
        self._receiving_paused = False
        self._unacked = 0
        # outbound
        self.pending: deque[bytes] = deque()
        self.pending_size = 0
        self.eof_queued = False
        self.eof_sent = False
        self._writable = True
        self._send_waiter: asyncio.Future[None] | None = None
        self._on_pause: Callable[[], None] | None = None
        self._on_resume: Callable[[], None] | None = None
        self.bytes_sent = 0
        self.bytes_received = 0
        self.done = False

    @property
    def peer(self) -> str:
        return self._conn.peer_label

    @property
    def failure(self) -> HboneTunnelError | None:
        """Why the connection carrying this stream died (keepalive timeout, ...), if it
        did: a reset tunnel's cause for logs and metrics."""
        return self._conn.failure

    @property
    def scratch(self) -> memoryview:
        """The connection's read buffer, for callers that copy out synchronously."""
        return self._conn.scratch

    def __repr__(self) -> str:
        return f"<HboneStream {self.stream_id} {self.authority} via {self.peer}>"

    # ---- events from the connection -------------------------------------------------

    def on_data(self, data: bytes | memoryview, flow_length: int) -> None:
        """`data` may be a view of the connection's read buffer, valid during the call."""
        self.bytes_received += len(data)
        if self._error is not None or self._recv_eof:
            self._conn.acknowledge(self.stream_id, flow_length)
            return
        if self._sink is not None:
            self._sink.data(data)
            if self._receiving_paused:
                self._unacked += flow_length
            else:
                self._conn.acknowledge(self.stream_id, flow_length)
            return
        self._chunks.append((bytes(data), flow_length))
        self._wake_receiver()

    def on_end(self) -> None:
        self._recv_eof = True
        if self._sink is not None:
            self._sink.eof()
        self._wake_receiver()
        self.maybe_done()

    def on_reset(self, error_code: int) -> None:
        if self.done:
            return
        self._error = HboneStreamReset(self.stream_id, error_code, peer=self.peer)
        self.pending.clear()
        self.pending_size = 0
        if self._sink is not None:
            self._sink.reset(self._error)
        self._wake_receiver()
        self._wake_sender()
        self._finish()

    def on_writability_changed(self) -> None:
        """Called by the connection after data left `pending` or the transport paused."""
        writable = (self.pending_size <= self._high_water and not self._conn.write_paused) \
            or self._error is not None
        if writable == self._writable:
            if writable:
                self._wake_sender()
            return
        self._writable = writable
        if writable:
            if self._on_resume is not None:
                self._on_resume()
            self._wake_sender()
        elif self._on_pause is not None:
            self._on_pause()

    def _wake_receiver(self) -> None:
        w = self._recv_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _wake_sender(self) -> None:
        w = self._send_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def maybe_done(self) -> None:
        if self._recv_eof and self.eof_sent and not self._chunks:
            self._finish()

    def _finish(self) -> None:
        if not self.done:
            self.done = True
            self._conn.stream_done(self)

    # ---- callback API ---------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue bytes without waiting; watch `set_write_callbacks` for backpressure."""
        if self._error is not None:
            raise self._error
        if self.eof_queued:
            raise anyio.ClosedResourceError("HBONE stream: cannot write after send_eof")
        if data:
            self.bytes_sent += len(data)
            self.pending.append(data)
            self.pending_size += len(data)
            self._conn.pump(self)

    def write_transient(self, data: memoryview) -> None:
        """`write` for a view of a buffer the caller reuses once this returns (a relay's
        read buffer): what flow control lets out now is encrypted straight from the
        view, without a copy; only the rest is copied and queued."""
        if self._error is not None:
            raise self._error
        if self.eof_queued:
            raise anyio.ClosedResourceError("HBONE stream: cannot write after send_eof")
        if not data:
            return
        self.bytes_sent += len(data)
        rest = data[self._conn.send_in_place(self, data):] if not self.pending else data
        if rest:
            kept = bytes(rest)
            self.pending.append(kept)
            self.pending_size += len(kept)
            self._conn.pump(self)

    def write_eof(self) -> None:
        if self._error is not None or self.eof_queued:
            return
        self.eof_queued = True
        self._conn.pump(self)

    def set_write_callbacks(self, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        self._on_pause, self._on_resume = pause, resume
        if not self._writable:
            pause()

    def attach_sink(self, sink: StreamSink) -> None:
        """Deliver inbound bytes to `sink` from now on (buffered bytes first)."""
        self._sink = sink
        while self._chunks:
            data, flow = self._chunks.popleft()
            sink.data(data)
            self._conn.acknowledge(self.stream_id, flow)
        if self._error is not None:
            sink.reset(self._error)
        elif self._recv_eof:
            sink.eof()

    def pause_receiving(self) -> None:
        """Stop returning flow-control credit: the peer stops once the window is used."""
        self._receiving_paused = True

    def resume_receiving(self) -> None:
        self._receiving_paused = False
        if self._unacked:
            n, self._unacked = self._unacked, 0
            self._conn.acknowledge(self.stream_id, n)

    def discard(self) -> None:
        """Forget a stream that was answered with an error (no RST: the answer ended it)."""
        unacked = sum(flow for _, flow in self._chunks)
        self._chunks.clear()
        if unacked:
            self._conn.acknowledge(self.stream_id, unacked)
        self._finish()

    def reset(self, error_code: int = CANCEL) -> None:
        """Abort the stream (RST_STREAM); the peer sees a reset, not an end."""
        if self.done:
            return
        self._conn.reset_stream(self.stream_id, error_code)
        self.on_reset(error_code)

    # ---- anyio ByteStream -------------------------------------------------------------

    async def receive(self, max_bytes: int = DEFAULT_RECEIVE) -> bytes:
        """Next bytes from the peer; anyio.EndOfStream once it sent END_STREAM."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._recv_eof:
                self.maybe_done()
                raise anyio.EndOfStream
            if self._sink is not None:
                raise anyio.BusyResourceError("receiving (a sink is attached)")
            self._recv_waiter = self._conn.loop.create_future()
            try:
                await self._recv_waiter
            finally:
                self._recv_waiter = None
        data, flow = self._chunks.popleft()
        if len(data) > max_bytes:
            self._chunks.appendleft((data[max_bytes:], 0))
            data = data[:max_bytes]
        else:
            total = len(data)
            parts = [data]
            while self._chunks and total + len(self._chunks[0][0]) <= max_bytes:
                more, more_flow = self._chunks.popleft()
                parts.append(more)
                total += len(more)
                flow += more_flow
            if len(parts) > 1:
                data = b"".join(parts)
        if flow:
            self._conn.acknowledge(self.stream_id, flow)
        return data

    async def send(self, item: bytes) -> None:
        self.write(item)
        await self.drain()

    async def drain(self) -> None:
        while not self._writable and self._error is None:
            self._send_waiter = self._conn.loop.create_future()
            try:
                await self._send_waiter
            finally:
                self._send_waiter = None
        if self._error is not None:
            raise self._error

    async def send_eof(self) -> None:
        self.write_eof()

    async def aclose(self) -> None:
        """Graceful where possible: END_STREAM if not sent; a reset if the peer is still
        sending (we will never read it), so neither side waits forever."""
        if self.done:
            return
        if not self._recv_eof:
            self.reset(CANCEL)
            return
        self.write_eof()
        if not self.pending:
            return
        with contextlib.suppress(HboneStreamReset):
            await self.drain()

