"""HTTP/2 (h2c, as spoken inside an HBONE tunnel) on both sides of the waypoint, with
the `h2` state machine. gRPC rides on it unchanged: streams, trailers (grpc-status,
grpc-message) and flow control are passed through, never interpreted.

One task reads each connection and dispatches frames to per-stream state; every
other task only calls the state machine and flushes. Writes go out under one lock
that is held from `data_to_send()` to the socket write, so frames never reorder.
Flow control is end to end: received DATA is acknowledged only when the consumer
takes it, so a slow backend slows the client instead of filling memory."""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import anyio
import anyio.abc
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import structlog

from waypoint.errors import ProtocolError, UpstreamResetError
from waypoint.http1 import DownstreamInfo, Handler
from waypoint.messages import (
    BodySource,
    EmptyBody,
    Headers,
    RequestHead,
    Response,
    end_to_end,
)

log = structlog.get_logger("waypoint.http2")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
READ_SIZE = 65536
WINDOW = 8 * 1024 * 1024
MAX_FRAME = 1024 * 1024
NO_BODY_STATUS = frozenset({204, 304})
# Rapid reset (CVE-2023-44487): streams a client resets before their answer. Past this
# many on one connection, and if they are at least half its streams, the connection is
# ended with GOAWAY ENHANCE_YOUR_CALM (Envoy's premature-reset guard does the same).
PREMATURE_RESETS_ALLOWED = 100
Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]


def _decode(headers: list[tuple[bytes, bytes]]) -> Headers:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]


def _forwardable(headers: Headers) -> Headers:
    """Headers an HTTP/2 peer accepts: lower case, no connection-specific ones;
    `te: trailers` survives (gRPC requires it)."""
    return [(k, v) for k, v in end_to_end(headers, keep_te_trailers=True)
            if not k.startswith(":") and k != "host"]


class _Stream:
    """Receive side of one stream: buffered DATA, end, trailers, reset."""

    def __init__(self) -> None:
        self.chunks: deque[tuple[bytes, int]] = deque()
        self.ended = False
        self.trailers: Headers | None = None
        self.reset_code: int | None = None
        self.headers: Headers | None = None
        self.informational = False
        self.changed = anyio.Event()
        self.scope: anyio.CancelScope | None = None

    def wake(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()


class _H2Body:
    """A body arriving on a stream; flow control credit is returned as it is read."""

    def __init__(self, conn: _H2Connection, stream_id: int, st: _Stream) -> None:
        self._conn = conn
        self._id = stream_id
        self._st = st
        self._done = False

    async def chunks(self) -> AsyncIterator[bytes]:
        st = self._st
        while True:
            if st.chunks:
                data, flow = st.chunks.popleft()
                if flow:
                    self._conn.ack(self._id, flow)
                    await self._conn.flush()
                if data:
                    yield data
                continue
            if st.ended:
                self._done = True
                return
            if st.reset_code is not None:
                self._done = True
                raise self._conn.reset_error(self._id, st.reset_code)
            await st.changed.wait()

    @property
    def trailers(self) -> Headers | None:
        return self._st.trailers

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            await self._conn.reset(self._id, h2.errors.ErrorCodes.CANCEL)


class _H2Connection:
    """What server and client share: the state machine, writes, flow control."""

    client_side = False

    def __init__(self, stream: anyio.abc.ByteStream, peer: str) -> None:
        self.io = stream
        self.peer = peer
        cfg = h2.config.H2Configuration(client_side=self.client_side, header_encoding=None,
                                        validate_inbound_headers=True)
        self.h2 = h2.connection.H2Connection(cfg)
        self.streams: dict[int, _Stream] = {}
        self._lock = anyio.Lock()
        self._window = anyio.Event()
        self.closed = False

    def _start(self) -> None:
        self.h2.initiate_connection()
        self.h2.update_settings({
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_FRAME,
        })
        self.h2.increment_flow_control_window(WINDOW)

    async def flush(self) -> None:
        async with self._lock:
            data = self.h2.data_to_send()
            if data:
                await self.io.send(data)

    def ack(self, stream_id: int, flow: int) -> None:
        with contextlib.suppress(h2.exceptions.StreamClosedError, KeyError):
            self.h2.acknowledge_received_data(flow, stream_id)

    async def reset(self, stream_id: int, code: int) -> None:
        with contextlib.suppress(h2.exceptions.StreamClosedError,
                                 h2.exceptions.ProtocolError, KeyError):
            self.h2.reset_stream(stream_id, code)
        self.streams.pop(stream_id, None)
        with contextlib.suppress(Exception):
            await self.flush()

    def reset_error(self, stream_id: int, code: int) -> Exception:
        return UpstreamResetError(self.peer, f"stream {stream_id} reset (code {code})")

    def _wake_window(self) -> None:
        self._window.set()
        self._window = anyio.Event()

    async def send_data(self, stream_id: int, data: bytes, end: bool = False) -> None:
        view = memoryview(data)
        while True:
            st = self.streams.get(stream_id)
            if self.closed or (st is not None and st.reset_code is not None):
                raise self.reset_error(stream_id, st.reset_code if st and st.reset_code else 0)
            try:
                window = min(self.h2.local_flow_control_window(stream_id),
                             self.h2.max_outbound_frame_size)
            except (h2.exceptions.StreamClosedError, KeyError):
                raise self.reset_error(stream_id, 0) from None
            if window <= 0 and len(view):
                await self._window.wait()
                continue
            part = view[:window]
            view = view[len(part):]
            last = end and not len(view)
            if len(part) or last:
                self.h2.send_data(stream_id, part.tobytes(), end_stream=last)
                await self.flush()
            if not len(view):
                return

    async def send_body(self, stream_id: int, body: BodySource) -> None:
        """DATA frames, then trailers (ending the stream) or an empty END_STREAM."""
        async for data in body.chunks():
            if data:
                await self.send_data(stream_id, data)
        trailers = body.trailers
        if trailers:
            self.h2.send_headers(stream_id, _forwardable(trailers), end_stream=True)
            await self.flush()
        else:
            await self.send_data(stream_id, b"", end=True)

    def _dispatch(self, ev: h2.events.Event) -> None:
        """Frame events common to both sides."""
        if isinstance(ev, h2.events.DataReceived):
            st = self.streams.get(ev.stream_id)
            if st is None:
                self.ack(ev.stream_id, ev.flow_controlled_length)
                return
            st.chunks.append((ev.data, ev.flow_controlled_length))
            if ev.stream_ended:
                st.ended = True
            st.wake()
        elif isinstance(ev, h2.events.StreamEnded):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.ended = True
                st.wake()
        elif isinstance(ev, h2.events.TrailersReceived):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.trailers = _decode(ev.headers)
                if ev.stream_ended:
                    st.ended = True
                st.wake()
        elif isinstance(ev, h2.events.StreamReset):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.reset_code = ev.error_code
                st.wake()
                if st.scope is not None:
                    st.scope.cancel()
            self._wake_window()
        elif isinstance(ev, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self._wake_window()

    def _lost(self) -> None:
        self.closed = True
        for st in self.streams.values():
            if not st.ended and st.reset_code is None:
                st.reset_code = h2.errors.ErrorCodes.CANCEL
            st.wake()
        self._wake_window()

    async def _read_loop(self, initial: bytes = b"") -> None:
        data = initial
        try:
            while True:
                if not data:
                    data = await self.io.receive(READ_SIZE)
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.ProtocolError as e:
                    raise ProtocolError(f"HTTP/2 protocol error from {self.peer}: {e}") from None
                data = b""
                for ev in events:
                    if isinstance(ev, h2.events.ConnectionTerminated):
                        self.closed = True
                    self._on_event(ev)
                await self.flush()
                if self.closed and not self.streams:
                    return
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError,
                ConnectionError, ProtocolError) as e:
            log.debug("h2 connection ended", peer=self.peer, reason=repr(e))
        finally:
            self._lost()
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await self.flush()

    def _on_event(self, ev: h2.events.Event) -> None:
        self._dispatch(ev)


class Http2ServerConnection(_H2Connection):
    """Serves one downstream h2c connection: each stream is handled by its own task,
    cancelled when the client resets the stream."""

    client_side = False

    def __init__(self, stream: anyio.abc.ByteStream, handler: Handler, info: DownstreamInfo,
                 initial: bytes = b"") -> None:
        super().__init__(stream, info.peer)
        self.handler = handler
        self.info = info
        self._initial = initial
        self._tg: anyio.abc.TaskGroup | None = None
        self._requests = 0
        self._premature_resets = 0

    async def serve(self) -> None:
        self._start()
        try:
            await self.flush()
            async with anyio.create_task_group() as tg:
                self._tg = tg
                await self._read_loop(self._initial)
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await self.io.aclose()

    def _on_event(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.StreamReset) and ev.stream_id in self.streams:
            self._premature_resets += 1
            if (self._premature_resets > PREMATURE_RESETS_ALLOWED
                    and 2 * self._premature_resets >= self._requests):
                log.warning("h2 rapid reset: connection closed", peer=self.peer,
                            requests=self._requests, resets=self._premature_resets)
                self.h2.close_connection(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
                raise ProtocolError(f"{self.peer} reset {self._premature_resets} of "
                                    f"{self._requests} streams before their answer")
        if isinstance(ev, h2.events.RequestReceived):
            self._requests += 1
            st = _Stream()
            st.ended = bool(ev.stream_ended)
            self.streams[ev.stream_id] = st
            assert self._tg is not None
            self._tg.start_soon(self._serve_stream, ev.stream_id, _decode(ev.headers), st,
                                not st.ended)
        else:
            self._dispatch(ev)

    async def _serve_stream(self, stream_id: int, raw: Headers, st: _Stream, has_body: bool
                            ) -> None:
        """`has_body` is decided when the HEADERS frame arrives: by the time this task
        runs, the whole body may already be buffered and the stream ended."""
        pseudo = {k: v for k, v in raw if k.startswith(":")}
        headers = [(k, v) for k, v in raw if not k.startswith(":")]
        method = pseudo.get(":method", "GET")
        # No :path (CONNECT) stays empty: the pipeline's normalize stage refuses it
        # (400) instead of a made-up "/" being matched and forwarded.
        head = RequestHead(method, pseudo.get(":path", ""),
                           pseudo.get(":authority", "") or self.info.destination or "",
                           headers, pseudo.get(":scheme", "http"), "HTTP/2",
                           has_body=has_body)
        body: BodySource = _H2Body(self, stream_id, st) if has_body else EmptyBody()
        with anyio.CancelScope() as scope:
            st.scope = scope
            try:
                resp = await self.handler(head, body, self.info)
                await self._respond(stream_id, method, resp)
            except (UpstreamResetError, ProtocolError, h2.exceptions.StreamClosedError,
                    h2.exceptions.ProtocolError) as e:
                log.debug("h2 stream aborted", stream=stream_id, error=str(e))
                await self.reset(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
                pass
        self.streams.pop(stream_id, None)
        if self.closed and not self.streams and self._tg is not None:
            self._tg.cancel_scope.cancel()

    async def _respond(self, stream_id: int, method: str, resp: Response) -> None:
        try:
            headers = [(":status", str(resp.status)), *_forwardable(resp.headers)]
            bodyless = method == "HEAD" or resp.status in NO_BODY_STATUS
            # A known-empty body ends the stream on HEADERS: gRPC's "trailers-only"
            # error responses must arrive that way (grpc-status in the one HEADERS).
            empty = isinstance(getattr(resp.body, "inner", resp.body), EmptyBody)
            if bodyless or empty:
                self.h2.send_headers(stream_id, headers, end_stream=True)
                await self.flush()
                return
            self.h2.send_headers(stream_id, headers)
            await self.flush()
            await self.send_body(stream_id, resp.body)
        finally:
            await resp.body.aclose()


class Http2ClientConnection(_H2Connection):
    """One upstream h2c connection (prior knowledge), multiplexing requests; the read
    loop and request-body senders run in the pool's task group (`spawn`)."""

    client_side = True

    def __init__(self, stream: anyio.abc.ByteStream, peer: str, spawn: Spawn,
                 on_closed: Callable[[Http2ClientConnection], None]) -> None:
        super().__init__(stream, peer)
        self.spawn = spawn
        self.on_closed = on_closed
        self.requests = 0

    async def start(self) -> None:
        self._start()
        await self.flush()

        async def run() -> None:
            try:
                await self._read_loop()
            finally:
                self.on_closed(self)
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await self.io.aclose()

        self.spawn(run)

    @property
    def has_capacity(self) -> bool:
        if self.closed:
            return False
        limit = self.h2.remote_settings.max_concurrent_streams or 100
        return self.h2.open_outbound_streams < limit

    @property
    def idle(self) -> bool:
        return not self.streams

    async def aclose(self) -> None:
        self.closed = True
        with contextlib.suppress(Exception):
            self.h2.close_connection()
            await self.flush()
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await self.io.aclose()

    async def request(self, head: RequestHead, body: BodySource) -> Response:
        if self.closed:
            raise UpstreamResetError(self.peer, "connection closed")
        self.requests += 1
        stream_id = self.h2.get_next_available_stream_id()
        st = _Stream()
        self.streams[stream_id] = st
        headers = [(":method", head.method), (":scheme", "http"),
                   (":authority", head.authority), (":path", head.target),
                   *_forwardable(head.headers)]
        try:
            self.h2.send_headers(stream_id, headers, end_stream=not head.has_body)
            await self.flush()
        except (h2.exceptions.ProtocolError, anyio.BrokenResourceError,
                anyio.ClosedResourceError, ConnectionError) as e:
            self.streams.pop(stream_id, None)
            raise UpstreamResetError(self.peer, f"could not send request: {e!r}") from None
        if head.has_body:
            self.spawn(lambda: self._send_request_body(stream_id, body))
        try:
            while st.headers is None:
                if st.reset_code is not None:
                    raise self.reset_error(stream_id, st.reset_code)
                await st.changed.wait()
        except BaseException:
            await self.reset(stream_id, h2.errors.ErrorCodes.CANCEL)
            raise
        status = int(next((v for k, v in st.headers if k == ":status"), "502"))
        resp_headers = [(k, v) for k, v in st.headers if not k.startswith(":")]
        if st.ended and not st.chunks and st.trailers is None:
            self.streams.pop(stream_id, None)
            return Response(status, resp_headers, EmptyBody(), upstream_host=self.peer)
        return Response(status, resp_headers, _ClientBody(self, stream_id, st),
                        upstream_host=self.peer)

    async def _send_request_body(self, stream_id: int, body: BodySource) -> None:
        try:
            await self.send_body(stream_id, body)
        except (UpstreamResetError, h2.exceptions.StreamClosedError, anyio.BrokenResourceError,
                anyio.ClosedResourceError, ConnectionError):
            return
        except ProtocolError:  # the client vanished mid-body: abandon the stream
            await self.reset(stream_id, h2.errors.ErrorCodes.CANCEL)

    def _on_event(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.ResponseReceived):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.headers = _decode(ev.headers)
                if ev.stream_ended:
                    st.ended = True
                st.wake()
        elif isinstance(ev, h2.events.InformationalResponseReceived):
            return
        else:
            self._dispatch(ev)
            if isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset):
                st = self.streams.get(ev.stream_id)
                if st is not None and st.headers is None and st.reset_code is None:
                    st.reset_code = 0


class _ClientBody(_H2Body):
    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for data in super().chunks():
                yield data
        finally:
            if self._st.ended:
                self._conn.streams.pop(self._id, None)
