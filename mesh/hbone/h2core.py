"""A narrow sans-I/O HTTP/2 core for CONNECT tunnels: what HBONE needs and no more.

Same interface and events as framing.H2Framing (the `h2`-based reference), about an
order of magnitude less interpreter work per frame. Speaks DATA, HEADERS (+
CONTINUATION, via `hpack`), SETTINGS, WINDOW_UPDATE, PING, RST_STREAM and GOAWAY;
ignores PRIORITY and unknown frame types; refuses PUSH_PROMISE. Why it exists and how
it is tested against h2: docs/performance.md.

Two choices that make it fast:
- DATA payloads are delivered as they arrive (a 16 MiB frame read in 256 KiB pieces
  becomes 64 DataArrived events), as views of the bytes fed, so big frames are never
  reassembled or copied and the first bytes reach the app before the frame's last
  byte is read;
- output is a list of byte strings: small frames are joined once per flush, big
  payloads go to the TLS layer as they are (no copy).
Connection errors queue GOAWAY with the error code and raise HboneProtocolError; the
connection flushes that and closes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

import hpack

from mesh.hbone.errors import HboneProtocolError
from mesh.hbone.events import (
    CANCEL,
    COMPRESSION_ERROR,
    DEFAULT_WINDOW,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    NO_ERROR,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    STREAM_CLOSED,
    Answered,
    DataArrived,
    Event,
    PeerGoingAway,
    PeerSettings,
    StreamAborted,
    StreamFinished,
    WindowOpened,
    connect_request,
    response_status,
)
from mesh.hbone.settings import TunnelSettings

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, \
    WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
MAX_WINDOW = 2**31 - 1
MAX_STREAM_ID = 2**31 - 1
MIN_FRAME = 16384
MAX_FRAME = 2**24 - 1
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS, S_INITIAL_WINDOW_SIZE, \
    S_MAX_FRAME_SIZE, S_MAX_HEADER_LIST_SIZE = range(1, 7)
UNLIMITED_STREAMS = 2**32 + 1  # what h2 reports when the peer sets no limit
BIG_CHUNK = 16384  # output pieces this big are not copied into a joined buffer


def _header(length: int, kind: int, flags: int, stream_id: int) -> bytes:
    return (length.to_bytes(3, "big") + bytes((kind, flags))
            + (stream_id & MAX_STREAM_ID).to_bytes(4, "big"))


@dataclass(slots=True)
class _Stream:
    send_window: int
    recv_window: int
    unacked: int = 0
    local_closed: bool = False
    remote_closed: bool = False
    answered: bool = False  # client side: a final (non-1xx) status was received


class H2Core:
    def __init__(self, *, client_side: bool, settings: TunnelSettings) -> None:
        self._client = client_side
        self._settings = settings
        self._encoder = hpack.Encoder()
        self._decoder = hpack.Decoder()
        self._out: list[bytes | memoryview] = []  # memoryview: send_data's, unjoined
        self._streams: dict[int, _Stream] = {}
        self._next_stream_id = 1 if client_side else 2
        self._highest_peer_stream = 0
        # peer's settings (what we may send)
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = MIN_FRAME
        self._peer_max_streams = UNLIMITED_STREAMS
        self._send_conn_window = DEFAULT_WINDOW
        # ours (what the peer may send): applied at once, see start()
        self._recv_initial_window = settings.stream_window
        self._max_inbound_frame = settings.max_frame_size
        self._recv_conn_window = DEFAULT_WINDOW
        self._conn_window_target = DEFAULT_WINDOW
        self._conn_unacked = 0
        # input state
        self._buf = bytearray()
        self._need_preface = not client_side
        self._data_left = 0  # bytes of a DATA payload still to stream through
        self._data_stream = 0
        self._data_flags = 0
        self._data_stream_live = False
        self._headers_stream = 0  # stream of a header block awaiting CONTINUATION
        self._headers_flags = 0
        self._headers_block = bytearray()
        self._goaway_sent = False
        self.open_outbound_streams = 0

    # ---- setup ----------------------------------------------------------------------

    def start(self) -> None:
        """Queue the preface (client), our SETTINGS and the big connection window.

        Our window and frame size are honoured from now on, before the peer ACKs them:
        a peer may only use them once it has seen them, so accepting early is safe."""
        s = self._settings
        pairs = [(S_INITIAL_WINDOW_SIZE, s.stream_window), (S_MAX_FRAME_SIZE, s.max_frame_size),
                 (S_ENABLE_PUSH, 0)]
        if not self._client:
            pairs.append((S_MAX_CONCURRENT_STREAMS, s.max_concurrent_streams))
        payload = b"".join(k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in pairs)
        if self._client:
            self._out.append(PREFACE)
        self._out.append(_header(len(payload), SETTINGS, 0, 0) + payload)
        if s.connection_window > DEFAULT_WINDOW:
            self._window_update(0, s.connection_window - DEFAULT_WINDOW)
            self._recv_conn_window = s.connection_window
        self._conn_window_target = max(s.connection_window, DEFAULT_WINDOW)

    # ---- input ----------------------------------------------------------------------

    def feed(self, data: bytes | memoryview) -> list[Event]:
        """Parse what arrived; raises HboneProtocolError on a connection error (a GOAWAY
        with the error code is queued first)."""
        events: list[Event] = []
        view = memoryview(data)
        if self._buf:
            self._buf += view
            view = memoryview(bytes(self._buf))
            self._buf.clear()
        pos, end = 0, len(view)
        if self._need_preface:
            take = min(len(PREFACE), end)
            if bytes(view[:take]) != PREFACE[:take]:
                self._fail(PROTOCOL_ERROR, "the client did not send the HTTP/2 preface")
            if take < len(PREFACE):
                self._buf += view
                return events
            self._need_preface = False
            pos = len(PREFACE)
        while pos < end:
            if self._data_left:
                n = min(self._data_left, end - pos)
                self._data_left -= n
                self._deliver(events, view[pos:pos + n], n)
                pos += n
                if not self._data_left:
                    self._data_done(events)
                continue
            if end - pos < 9:
                break
            length = int.from_bytes(view[pos:pos + 3], "big")
            kind, flags = view[pos + 3], view[pos + 4]
            sid = int.from_bytes(view[pos + 5:pos + 9], "big") & MAX_STREAM_ID
            if length > self._max_inbound_frame:
                self._fail(FRAME_SIZE_ERROR, f"frame of {length} bytes exceeds "
                                             f"{self._max_inbound_frame}")
            if self._headers_stream and (kind != CONTINUATION or sid != self._headers_stream):
                self._fail(PROTOCOL_ERROR, "header block interrupted by another frame")
            if kind == DATA and not flags & PADDED:
                pos += 9
                self._data_start(events, sid, flags, length)
                if not length:
                    self._data_done(events)
                continue
            if end - pos < 9 + length:
                break
            self._frame(events, kind, flags, sid, view[pos + 9:pos + 9 + length])
            pos += 9 + length
        if pos < end:
            self._buf += view[pos:]
        return events

    def _data_start(self, events: list[Event], sid: int, flags: int, length: int) -> None:
        """Flow control is charged for the whole frame at its header."""
        if sid == 0:
            self._fail(PROTOCOL_ERROR, "DATA on stream 0")
        self._recv_conn_window -= length
        if self._recv_conn_window < 0:
            self._fail(FLOW_CONTROL_ERROR, "peer overran the connection window")
        st = self._streams.get(sid)
        if st is None or st.remote_closed:
            if self._idle(sid):
                self._fail(PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            if st is not None:  # half-closed (remote): a stream error (RFC 9113 §5.1)
                self._reset(sid, STREAM_CLOSED)
                events.append(StreamAborted(sid, STREAM_CLOSED))
            live = False  # a stream we closed or reset: drop, give the window back
            self._conn_credit(length)
        else:
            st.recv_window -= length
            if st.recv_window < 0:
                self._fail(FLOW_CONTROL_ERROR, f"peer overran stream {sid}'s window")
            live = True
        self._data_left, self._data_stream, self._data_flags = length, sid, flags
        self._data_stream_live = live

    def _idle(self, sid: int) -> bool:
        """Never opened by either side (as opposed to closed)."""
        if (sid & 1) == (self._next_stream_id & 1):
            return sid >= self._next_stream_id
        return sid > self._highest_peer_stream

    def _deliver(self, events: list[Event], payload: memoryview, flow: int) -> None:
        if self._data_stream_live and flow:
            events.append(DataArrived(self._data_stream, payload, flow))

    def _data_done(self, events: list[Event]) -> None:
        if self._data_flags & END_STREAM and self._data_stream_live:
            self._remote_end(events, self._data_stream)

    def _frame(self, events: list[Event], kind: int, flags: int, sid: int,
               payload: memoryview) -> None:
        if kind == DATA:  # padded: whole frame is here
            pad = payload[0] if payload else 0
            if not payload or pad >= len(payload):
                self._fail(PROTOCOL_ERROR, "DATA padding exceeds the payload")
            self._data_start(events, sid, flags, len(payload))
            self._data_left = 0
            body = payload[1:len(payload) - pad]
            if self._data_stream_live:
                events.append(DataArrived(sid, bytes(body), len(payload)))
            self._data_done(events)
        elif kind == HEADERS:
            self._headers(events, flags, sid, payload)
        elif kind == CONTINUATION:
            if not self._headers_stream:
                self._fail(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
            self._headers_block += payload
            if flags & END_HEADERS:
                self._header_block_done(events)
        elif kind == SETTINGS:
            self._peer_settings(events, flags, sid, payload)
        elif kind == WINDOW_UPDATE:
            self._window_updated(events, sid, payload)
        elif kind == RST_STREAM:
            if sid == 0 or len(payload) != 4:
                self._fail(PROTOCOL_ERROR, "malformed RST_STREAM")
            if self._streams.pop(sid, None) is not None:
                self._closed(sid)
                events.append(StreamAborted(sid, int.from_bytes(payload, "big")))
        elif kind == PING:
            if sid != 0 or len(payload) != 8:
                self._fail(PROTOCOL_ERROR if sid else FRAME_SIZE_ERROR, "malformed PING")
            if not flags & ACK:
                self._out.append(_header(8, PING, ACK, 0) + bytes(payload))
        elif kind == GOAWAY:
            if sid != 0 or len(payload) < 8:
                self._fail(PROTOCOL_ERROR, "malformed GOAWAY")
            events.append(PeerGoingAway(int.from_bytes(payload[0:4], "big") & MAX_STREAM_ID,
                                        int.from_bytes(payload[4:8], "big")))
        elif kind == PUSH_PROMISE:
            self._fail(PROTOCOL_ERROR, "PUSH_PROMISE although push is disabled")
        elif kind == PRIORITY and sid == 0:
            self._fail(PROTOCOL_ERROR, "PRIORITY on stream 0")
        # PRIORITY and unknown types: ignored (RFC 9113 §5.5)

    def _headers(self, events: list[Event], flags: int, sid: int, payload: memoryview) -> None:
        if sid == 0:
            self._fail(PROTOCOL_ERROR, "HEADERS on stream 0")
        start, stop = 0, len(payload)
        if flags & PADDED:
            if not payload:
                self._fail(PROTOCOL_ERROR, "HEADERS padding without a length")
            start, stop = 1, len(payload) - payload[0]
        if flags & PRIORITY_FLAG:
            start += 5
        if start > stop:
            self._fail(PROTOCOL_ERROR, "HEADERS padding exceeds the payload")
        self._headers_stream, self._headers_flags = sid, flags
        self._headers_block = bytearray(payload[start:stop])
        if flags & END_HEADERS:
            self._header_block_done(events)

    def _header_block_done(self, events: list[Event]) -> None:
        sid, flags = self._headers_stream, self._headers_flags
        block = bytes(self._headers_block)
        self._headers_stream, self._headers_block = 0, bytearray()
        try:  # decode every block, even for dead streams: the HPACK state is shared
            headers = list(self._decoder.decode(block, raw=True))
        except hpack.HPACKError as exc:
            self._fail(COMPRESSION_ERROR, f"bad header block: {exc}")
        st = self._streams.get(sid)
        peer_initiated = (sid & 1) != (self._next_stream_id & 1)
        if st is None:
            if not peer_initiated or sid <= self._highest_peer_stream:
                return  # a late frame for a stream already closed or reset
            if self._client:
                self._fail(PROTOCOL_ERROR, f"server opened stream {sid}")
            self._highest_peer_stream = sid
            inbound = len(self._streams) - self.open_outbound_streams
            if inbound >= self._settings.max_concurrent_streams:
                self._out.append(_header(4, RST_STREAM, 0, sid)
                                 + REFUSED_STREAM.to_bytes(4, "big"))
                return
            st = _Stream(send_window=self._peer_initial_window,
                         recv_window=self._recv_initial_window)
            self._streams[sid] = st
            events.append(connect_request(sid, headers))
        elif not peer_initiated and not st.answered:
            status = response_status(headers)
            if 100 <= status < 200:
                return  # informational: the final answer follows
            st.answered = True
            events.append(Answered(sid, status))
        elif not flags & END_STREAM:
            self._fail(PROTOCOL_ERROR, f"trailers without END_STREAM on stream {sid}")
        if flags & END_STREAM and not st.remote_closed:
            self._remote_end(events, sid)

    def _peer_settings(self, events: list[Event], flags: int, sid: int,
                       payload: memoryview) -> None:
        if sid != 0:
            self._fail(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                self._fail(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            self._fail(FRAME_SIZE_ERROR, "SETTINGS payload not a multiple of 6")
        for i in range(0, len(payload), 6):
            key = int.from_bytes(payload[i:i + 2], "big")
            value = int.from_bytes(payload[i + 2:i + 6], "big")
            if key == S_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    self._fail(FLOW_CONTROL_ERROR, f"INITIAL_WINDOW_SIZE {value}")
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for st in self._streams.values():
                    st.send_window += delta
                    if st.send_window > MAX_WINDOW:
                        self._fail(FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE overflows")
            elif key == S_MAX_FRAME_SIZE:
                if not MIN_FRAME <= value <= MAX_FRAME:
                    self._fail(PROTOCOL_ERROR, f"MAX_FRAME_SIZE {value}")
                self._peer_max_frame = value
            elif key == S_MAX_CONCURRENT_STREAMS:
                self._peer_max_streams = value
            elif key == S_HEADER_TABLE_SIZE:
                self._encoder.header_table_size = value
            elif key == S_ENABLE_PUSH and value > 1:
                self._fail(PROTOCOL_ERROR, f"ENABLE_PUSH {value}")
        self._out.append(_header(0, SETTINGS, ACK, 0))
        events.append(PeerSettings(self._peer_max_streams))
        events.append(WindowOpened(0))

    def _window_updated(self, events: list[Event], sid: int, payload: memoryview) -> None:
        if len(payload) != 4:
            self._fail(FRAME_SIZE_ERROR, "WINDOW_UPDATE payload is not 4 bytes")
        inc = int.from_bytes(payload, "big") & MAX_WINDOW
        if sid == 0:
            if inc == 0:
                self._fail(PROTOCOL_ERROR, "WINDOW_UPDATE of 0 on the connection")
            self._send_conn_window += inc
            if self._send_conn_window > MAX_WINDOW:
                self._fail(FLOW_CONTROL_ERROR, "connection window over 2^31-1")
            events.append(WindowOpened(0))
            return
        st = self._streams.get(sid)
        if st is None:
            return
        if inc == 0:
            self._reset(sid, PROTOCOL_ERROR)
            events.append(StreamAborted(sid, PROTOCOL_ERROR))
            return
        st.send_window += inc
        if st.send_window > MAX_WINDOW:
            self._reset(sid, FLOW_CONTROL_ERROR)
            events.append(StreamAborted(sid, FLOW_CONTROL_ERROR))
            return
        events.append(WindowOpened(sid))

    def _remote_end(self, events: list[Event], sid: int) -> None:
        st = self._streams.get(sid)
        if st is None:
            return
        st.remote_closed = True
        events.append(StreamFinished(sid))
        if st.local_closed:
            self._forget(sid)

    def _fail(self, code: int, message: str) -> NoReturn:
        """A connection error: GOAWAY now, then the caller closes the connection."""
        if not self._goaway_sent:
            self._goaway(code)
        raise HboneProtocolError(f"HTTP/2 protocol error from peer: {message}")

    # ---- output ---------------------------------------------------------------------

    def open_connect(self, authority: str, headers: tuple[tuple[str, str], ...] = ()) -> int:
        """Queue a CONNECT for `authority`; returns the new stream id.

        Raises HboneProtocolError when this connection has no stream ids left."""
        sid = self._next_stream_id
        if sid > MAX_STREAM_ID or self._goaway_sent:
            raise HboneProtocolError("connection has used all its stream ids")
        self._next_stream_id += 2
        block = [(b":method", b"CONNECT"), (b":authority", authority.encode())]
        block += [(k.lower().encode(), v.encode()) for k, v in headers]
        self._streams[sid] = _Stream(send_window=self._peer_initial_window,
                                     recv_window=self._recv_initial_window)
        self.open_outbound_streams += 1
        self._send_headers(sid, block, end_stream=False)
        return sid

    def answer(self, stream_id: int, status: int, *, end_stream: bool) -> bool:
        """False when the stream is already gone (the client gave up first)."""
        st = self._streams.get(stream_id)
        if st is None or st.local_closed or self._goaway_sent:
            return False
        self._send_headers(stream_id, [(b":status", str(status).encode())],
                           end_stream=end_stream)
        if end_stream:
            self._local_end(stream_id, st)
        return True

    def _send_headers(self, sid: int, headers: list[tuple[bytes, bytes]], *,
                      end_stream: bool) -> None:
        block = self._encoder.encode(headers)
        flags = END_STREAM if end_stream else 0
        size = self._peer_max_frame
        first, rest = block[:size], block[size:]
        self._out.append(_header(len(first), HEADERS, flags | (0 if rest else END_HEADERS),
                                 sid) + first)
        while rest:
            chunk, rest = rest[:size], rest[size:]
            self._out.append(_header(len(chunk), CONTINUATION, 0 if rest else END_HEADERS,
                                     sid) + chunk)

    def send_window(self, stream_id: int) -> int:
        st = self._streams.get(stream_id)
        if st is None or st.local_closed:
            return 0
        return max(0, min(st.send_window, self._send_conn_window))

    def send_data(self, stream_id: int, data: bytes | memoryview,
                  end_stream: bool = False) -> int:
        """Frame as much of `data` as the flow-control windows allow; returns bytes taken.

        END_STREAM rides on the frame carrying the last byte when all of it fits."""
        st = self._streams.get(stream_id)
        if st is None or st.local_closed or self._goaway_sent:
            return 0
        take = min(st.send_window, self._send_conn_window, len(data))
        if take <= 0:
            return 0
        st.send_window -= take
        self._send_conn_window -= take
        size = self._peer_max_frame
        out = self._out
        if take == len(data) and take <= size:  # the common case: one frame, no copy
            last = END_STREAM if end_stream else 0
            out.append(_header(take, DATA, last, stream_id))
            out.append(data)
        else:
            view = memoryview(data)
            sent = 0
            while sent < take:
                n = min(size, take - sent)
                last = END_STREAM if end_stream and sent + n == len(data) else 0
                out.append(_header(n, DATA, last, stream_id))
                out.append(bytes(view[sent:sent + n]))
                sent += n
        if end_stream and take == len(data):
            self._local_end(stream_id, st)
        return take

    def end_stream(self, stream_id: int) -> None:
        st = self._streams.get(stream_id)
        if st is None or st.local_closed or self._goaway_sent:
            return
        self._out.append(_header(0, DATA, END_STREAM, stream_id))
        self._local_end(stream_id, st)

    def _local_end(self, sid: int, st: _Stream) -> None:
        st.local_closed = True
        if st.remote_closed:
            self._forget(sid)

    def reset(self, stream_id: int, error_code: int = CANCEL) -> None:
        if stream_id in self._streams and not self._goaway_sent:
            self._reset(stream_id, error_code)

    def _reset(self, sid: int, code: int) -> None:
        self._out.append(_header(4, RST_STREAM, 0, sid) + code.to_bytes(4, "big"))
        if self._streams.pop(sid, None) is not None:
            self._closed(sid)

    def _forget(self, sid: int) -> None:
        if self._streams.pop(sid, None) is not None:
            self._closed(sid)

    def _closed(self, sid: int) -> None:
        if (sid & 1) == (self._next_stream_id & 1):
            self.open_outbound_streams -= 1

    def acknowledge(self, stream_id: int, size: int) -> None:
        """Give `size` consumed bytes back to the peer's windows. WINDOW_UPDATEs go out
        once half a window is owed: few frames, and the peer never stalls."""
        if size <= 0:
            return
        self._conn_credit(size)
        st = self._streams.get(stream_id)
        if st is None or st.remote_closed:
            return
        st.unacked += size
        if st.unacked >= self._recv_initial_window // 2:
            self._window_update(stream_id, st.unacked)
            st.recv_window += st.unacked
            st.unacked = 0

    def _conn_credit(self, size: int) -> None:
        self._conn_unacked += size
        if self._conn_unacked >= self._conn_window_target // 2:
            self._window_update(0, self._conn_unacked)
            self._recv_conn_window += self._conn_unacked
            self._conn_unacked = 0

    def _window_update(self, sid: int, inc: int) -> None:
        if not self._goaway_sent:
            self._out.append(_header(4, WINDOW_UPDATE, 0, sid) + inc.to_bytes(4, "big"))

    def go_away(self, error_code: int = NO_ERROR) -> None:
        """Queue GOAWAY; nothing else is sent after it (as h2 behaves)."""
        if not self._goaway_sent:
            self._goaway(error_code)

    def _goaway(self, code: int) -> None:
        self._out.append(_header(8, GOAWAY, 0, 0) + self._highest_peer_stream.to_bytes(4, "big")
                         + code.to_bytes(4, "big"))
        self._goaway_sent = True

    def output(self) -> bytes:
        out = self._out
        if not out:
            return b""
        data = bytes(out[0]) if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def output_chunks(self) -> list[bytes | memoryview]:
        """What to send, as few pieces as possible without copying big DATA payloads:
        small frames are joined, a payload of BIG_CHUNK or more stays its own piece
        (the TLS layer encrypts pieces one after the other into the same send)."""
        out = self._out
        chunks: list[bytes | memoryview]
        if len(out) <= 1:
            chunks = list(out)
        else:
            chunks = []
            small: list[bytes | memoryview] = []
            for piece in out:
                if len(piece) >= BIG_CHUNK:
                    if small:
                        chunks.append(b"".join(small))
                        small = []
                    chunks.append(piece)
                else:
                    small.append(piece)
            if small:
                chunks.append(b"".join(small))
        out.clear()
        return chunks

    @property
    def peer_max_concurrent_streams(self) -> int:
        return self._peer_max_streams


