"""One HBONE connection (TLS + HTTP/2), client or server side, as an asyncio protocol.

A BufferedProtocol reading into one reused buffer (no allocation per TLS read),
feeding the sans-I/O framing, dispatching its events to streams, and writing its
output once per batch. Streams call back into it to send, acknowledge and reset.

Liveness: a PING keepalive (keepalive.py) on both sides. A connection that fails it
records why in `failure`, aborts, and every stream on it sees a reset."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import cast

import structlog

from mesh.hbone.errors import (
    HboneKeepaliveTimeout,
    HboneProtocolError,
    HboneStreamRefused,
    HboneTunnelError,
)
from mesh.hbone.events import (
    REFUSED_STREAM,
    Answered,
    ConnectRequested,
    DataArrived,
    Event,
    PeerGoingAway,
    PeerSettings,
    StreamAborted,
    StreamFinished,
    WindowOpened,
)
from mesh.hbone.framing import H2Framing
from mesh.hbone.h2core import H2Core
from mesh.hbone.keepalive import Keepalive, KeepaliveAction, ping_frame
from mesh.hbone.settings import TunnelSettings
from mesh.hbone.stream import HboneStream
from mesh.identity.errors import CertificateError
from mesh.identity.spiffe import SpiffeId
from mesh.identity.tls import ALPN, peer_identity

log = structlog.get_logger(__name__)

RequestCallback = Callable[["HboneConnection", ConnectRequested], None]
IdleCallback = Callable[["HboneConnection"], None]


class HboneConnection(asyncio.BufferedProtocol):
    def __init__(self, *, client_side: bool, settings: TunnelSettings,
                 peer_address: tuple[str, int], on_request: RequestCallback | None = None,
                 on_idle: IdleCallback | None = None,
                 on_lost: IdleCallback | None = None) -> None:
        self.client_side = client_side
        self.settings = settings
        self.peer_address = peer_address
        self.peer_label = f"{peer_address[0]}:{peer_address[1]}"
        self.peer_identity: SpiffeId | None = None
        self.ssl_context: ssl.SSLContext | None = None
        codec = H2Core if settings.framing == "h2core" else H2Framing
        self._framing: H2Core | H2Framing = codec(client_side=client_side, settings=settings)
        self._on_request = on_request
        self._on_idle = on_idle
        self._on_lost = on_lost
        self._buffer = bytearray(settings.read_buffer)
        self._view = memoryview(self._buffer)
        self._transport: asyncio.Transport | None = None
        self.streams: dict[int, HboneStream] = {}
        self._responses: dict[int, asyncio.Future[int]] = {}
        self._blocked: set[HboneStream] = set()
        self.write_paused = False
        self.closed = False
        self.going_away = False
        self.peer_max_streams = 100
        self._loop = loop = asyncio.get_running_loop()
        self._flush_scheduled = False
        self._feeding = False  # inside buffer_updated, which flushes once at its end
        self._last_send = -1.0  # perf_counter() of the last send (_flush_soon)
        # Flushes made by _flush_soon: at once, or batched to the next loop turn.
        self.flushes_at_once = 0
        self.flushes_batched = 0
        self.bytes_sent_in_place = 0  # framed from a caller's buffer, no copy
        self.ready: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        # Why the connection ended, when it was not a plain close (keepalive, ...).
        self.failure: HboneTunnelError | None = None
        self._keepalive: Keepalive | None = None
        self._keepalive_timer: asyncio.TimerHandle | None = None

    # ---- asyncio protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=self.settings.transport_high_water)
        sslobj = transport.get_extra_info("ssl_object")
        try:
            if sslobj is None or sslobj.selected_alpn_protocol() != ALPN:
                raise HboneProtocolError("peer did not negotiate ALPN h2")
            self.peer_identity = peer_identity(sslobj)
        except (HboneProtocolError, CertificateError) as exc:
            log.warning("hbone.peer_rejected", peer=self.peer_label, reason=str(exc))
            self._fail(HboneTunnelError(str(exc), peer=self.peer_label))
            transport.abort()
            return
        self._framing.start()
        self._flush()
        if self.settings.keepalive:
            self._keepalive = Keepalive(self.settings.keepalive_interval,
                                        self.settings.keepalive_timeout, self._loop.time())
            self._keepalive_timer = self._loop.call_at(
                self._loop.time() + self.settings.keepalive_interval, self._keepalive_tick)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop this connection runs on: streams create their waiters on it
        (asyncio.get_running_loop() costs a getpid() system call per call on 3.11)."""
        return self._loop

    @property
    def scratch(self) -> memoryview:
        """The read buffer, lent to relays: whatever lands here is copied out (or
        consumed) before the callback that received it returns."""
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        if self._keepalive is not None:
            self._keepalive.received(self._loop.time())
        try:
            events = self._framing.feed(self._view[:nbytes])
            if (events and self.client_side and not self.ready.done()
                    and not isinstance(events[0], PeerSettings)):
                # CONNECT left before the peer's SETTINGS (client.py): an answer may
                # only count once the peer has shown it speaks HTTP/2.
                raise HboneProtocolError("the peer's first HTTP/2 frame was not SETTINGS: "
                                         "not an HBONE server")
        except HboneProtocolError as exc:
            log.warning("hbone.protocol_error", peer=self.peer_label, error=str(exc))
            self._flush()
            self._fail(HboneTunnelError(str(exc), peer=self.peer_label))
            self.abort()
            return
        # Acknowledgements and sends made while dispatching leave in the one flush
        # below, not in a flush of their own a loop turn later.
        self._feeding = True
        try:
            self._dispatch(events)
        finally:
            self._feeding = False
        self._flush()

    def _dispatch(self, events: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, DataArrived):
                stream = self.streams.get(ev.stream_id)
                if stream is None:
                    self._framing.acknowledge(ev.stream_id, ev.flow_length)
                else:
                    stream.on_data(ev.data, ev.flow_length)
            elif isinstance(ev, WindowOpened):
                self._window_opened(ev.stream_id)
            elif isinstance(ev, StreamFinished):
                stream = self.streams.get(ev.stream_id)
                if stream is not None:
                    stream.on_end()
            elif isinstance(ev, ConnectRequested):
                if self._on_request is not None and not self.going_away:
                    self._on_request(self, ev)
                else:
                    self._framing.reset(ev.stream_id, REFUSED_STREAM)
            elif isinstance(ev, Answered):
                fut = self._responses.pop(ev.stream_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(ev.status)
            elif isinstance(ev, StreamAborted):
                self._stream_aborted(ev.stream_id, ev.error_code)
            elif isinstance(ev, PeerSettings):
                self.peer_max_streams = ev.max_concurrent_streams
                if not self.ready.done():
                    self.ready.set_result(None)
            elif isinstance(ev, PeerGoingAway):
                self.going_away = True
                for sid in [s for s in self.streams if s > ev.last_stream_id]:
                    self._stream_aborted(sid, ev.error_code)

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        self.write_paused = True
        for stream in list(self.streams.values()):
            stream.on_writability_changed()

    def resume_writing(self) -> None:
        self.write_paused = False
        for stream in list(self.streams.values()):
            stream.on_writability_changed()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._keepalive_timer is not None:
            self._keepalive_timer.cancel()
            self._keepalive_timer = None
        self._fail(self.failure or HboneTunnelError(f"connection lost: {exc or 'closed'}",
                                                    peer=self.peer_label))
        for stream in list(self.streams.values()):
            stream.on_reset(0)
        if not self.lost.done():
            self.lost.set_result(None)
        if self._on_lost is not None:
            self._on_lost(self)

    # ---- keepalive ------------------------------------------------------------------

    def _keepalive_tick(self) -> None:
        self._keepalive_timer = None
        ka = self._keepalive
        if ka is None or self.closed or self._transport is None:
            return
        action, next_at = ka.poll(self._loop.time())
        if action is KeepaliveAction.DEAD:
            self.failure = HboneKeepaliveTimeout(ka.timeout, peer=self.peer_label)
            log.warning("hbone.keepalive_timeout", peer=self.peer_label,
                        peer_identity=str(self.peer_identity), streams=len(self.streams),
                        client_side=self.client_side,
                        silent_for=round(self._loop.time() - ka.last_received, 3))
            self.closed = True  # no more writes, no new streams from the pool
            self._transport.abort()  # connection_lost resets every stream, failure says why
            return
        if action is KeepaliveAction.PING:
            self._flush()  # the codec's pending frames first: the PING starts a frame
            self._transport.write(ping_frame(ka.opaque()))
        self._keepalive_timer = self._loop.call_at(next_at, self._keepalive_tick)

    # ---- operations used by streams, client and server ------------------------------

    def _fail(self, exc: Exception) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc)
            self.ready.exception()  # mark retrieved: nobody may be waiting
        for fut in self._responses.values():
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()
        self._responses.clear()

    def _flush_soon(self) -> None:
        """Batch: the frames of everything sent in this loop turn (64 connections
        through one tunnel at saturation) leave in one TLS record and one send() at the
        next turn. With a finite `settings.flush_gap`, a send that follows a quiet
        moment leaves at once instead (measured: no faster, more writes and wake-ups).
        Inside buffer_updated nothing is scheduled: it flushes at its end."""
        if self._feeding:
            return
        now = time.perf_counter()
        last, self._last_send = self._last_send, now
        if self._flush_scheduled:
            return
        if now - last >= self.settings.flush_gap:
            self.flushes_at_once += 1
            self._flush()
            return
        self._flush_scheduled = True
        self.flushes_batched += 1
        self._loop.call_soon(self._flush)

    def _flush(self) -> int:
        """Write what the codec has queued; returns how many bytes."""
        self._flush_scheduled = False
        chunks = self._framing.output_chunks()
        if not chunks or self._transport is None or self.closed:
            return 0
        if len(chunks) == 1:
            self._transport.write(chunks[0])
            return len(chunks[0])
        self._transport.writelines(chunks)
        return sum(len(c) for c in chunks)

    def open_stream(self, authority: str, headers: tuple[tuple[str, str], ...] = ()
                    ) -> tuple[HboneStream, asyncio.Future[int]]:
        """Send CONNECT; the future resolves to the status the peer answers. Allowed
        before the peer's SETTINGS have come (the answer is not: buffer_updated)."""
        if self.closed or (self.ready.done() and self.ready.exception() is not None):
            raise self.failure or HboneTunnelError("the connection has failed",
                                                   peer=self.peer_label)
        stream_id = self._framing.open_connect(authority, headers)
        stream = HboneStream(self, stream_id, authority, self.peer_identity,
                             self.settings.stream_high_water)
        self.streams[stream_id] = stream
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._responses[stream_id] = fut
        self._flush_soon()
        return stream, fut

    def register_stream(self, request: ConnectRequested) -> HboneStream:
        stream = HboneStream(self, request.stream_id, request.authority, self.peer_identity,
                             self.settings.stream_high_water)
        self.streams[request.stream_id] = stream
        return stream

    def answer(self, stream_id: int, status: int) -> bool:
        if self.closed:
            return False
        ok = 200 <= status < 300
        sent = self._framing.answer(stream_id, status, end_stream=not ok)
        self._flush_soon()
        return sent

    def pump(self, stream: HboneStream) -> None:
        """Move a stream's queued bytes into frames as far as flow control allows."""
        if self.closed:
            return
        sid = stream.stream_id
        pending = stream.pending
        while pending:
            chunk = pending[0]
            n = self._framing.send_data(sid, chunk)
            if n == 0:
                break
            stream.pending_size -= n
            if n == len(chunk):
                pending.popleft()
            else:
                pending[0] = chunk[n:]
                break
        if pending:
            self._blocked.add(stream)
        else:
            self._blocked.discard(stream)
            if stream.eof_queued and not stream.eof_sent:
                stream.eof_sent = True
                self._framing.end_stream(sid)
        self._flush_soon()
        stream.on_writability_changed()
        if stream.eof_sent:
            stream.maybe_done()

    def send_in_place(self, stream: HboneStream, data: memoryview) -> int:
        """Frame what flow control allows of `data`, a view the caller reuses once this
        returns, and flush now so TLS encrypts it from the view; returns bytes taken.

        uvloop's TLS transport encrypts a write at once (TLS 1.3 with memory BIOs:
        SSL_write cannot ask to read first); its buffer then grows by nothing (sent) or
        by the ciphertext, always longer than the plaintext (22 bytes per record).
        Growing by no more than the plaintext means it kept the write unencrypted, with
        a view of a buffer about to change: the connection is aborted (every stream
        sees a reset, no peer ever gets altered bytes)."""
        transport = self._transport
        if self.closed or transport is None:
            return len(data)  # dropped, as pump drops a closed connection's data
        framing = self._framing
        if isinstance(framing, H2Core):
            taken = framing.send_data(stream.stream_id, data)
        else:  # the h2 reference codec takes bytes
            taken = framing.send_data(stream.stream_id, bytes(data))
        if taken:
            self.bytes_sent_in_place += taken
            before = transport.get_write_buffer_size()
            plain = self._flush()
            grown = transport.get_write_buffer_size() - before
            if 0 < grown <= plain:
                log.error("hbone.write_kept", peer=self.peer_label, queued=grown)
                self._fail(HboneTunnelError("the TLS transport kept a write unencrypted",
                                            peer=self.peer_label))
                self.abort()
        return taken

    def _window_opened(self, stream_id: int) -> None:
        if stream_id == 0:
            for stream in list(self._blocked):
                self.pump(stream)
        else:
            one = self.streams.get(stream_id)
            if one is not None and one in self._blocked:
                self.pump(one)

    def acknowledge(self, stream_id: int, size: int) -> None:
        if self.closed:
            return
        self._framing.acknowledge(stream_id, size)
        self._flush_soon()

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        if self.closed:
            return
        self._framing.reset(stream_id, error_code)
        self._flush_soon()

    def _stream_aborted(self, stream_id: int, error_code: int) -> None:
        fut = self._responses.pop(stream_id, None)
        if fut is not None and not fut.done():
            cls = HboneStreamRefused if error_code == REFUSED_STREAM else HboneTunnelError
            fut.set_exception(cls(
                f"stream {stream_id} reset before an answer (HTTP/2 error {error_code})",
                peer=self.peer_label))
            fut.exception()
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.on_reset(error_code)

    def stream_done(self, stream: HboneStream) -> None:
        self.streams.pop(stream.stream_id, None)
        self._blocked.discard(stream)
        self._responses.pop(stream.stream_id, None)
        if not self.streams:
            if self.going_away:
                self.close()
            elif self._on_idle is not None:
                self._on_idle(self)

    def go_away(self) -> None:
        """Drain: take no new streams, let existing ones finish, then close (sending
        GOAWAY). New CONNECTs from the peer meanwhile get REFUSED_STREAM."""
        if self.closed:
            return
        self.going_away = True
        if not self.streams:
            self.close()

    def close(self) -> None:
        """GOAWAY, flush, close; streams still open see a reset."""
        if self._transport is not None and not self.closed:
            self._framing.go_away()
            self._flush()
            self.closed = True
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    @property
    def active_streams(self) -> int:
        return len(self.streams)
