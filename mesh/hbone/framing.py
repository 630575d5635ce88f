"""HTTP/2 framing for HBONE through the `h2` library: the reference implementation.

Sans-I/O: bytes in, events out; calls in, bytes to send out. Events are our own
types (mesh.hbone.events), so the narrow, faster h2core.H2Core sits behind the same
interface; this one stays as the peer H2Core is tested against (docs/performance.md)."""

from __future__ import annotations

import binascii
import contextlib

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.frame_buffer
import h2.settings
import hyperframe.frame

from mesh.hbone.errors import HboneProtocolError
from mesh.hbone.events import (
    CANCEL,
    CONNECT_ERROR,
    DEFAULT_WINDOW,
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
    connect_request,
    response_status,
)
from mesh.hbone.settings import TunnelSettings

__all__ = [
    "CANCEL", "CONNECT_ERROR", "REFUSED_STREAM", "Answered", "ConnectRequested",
    "DataArrived", "Event", "H2Framing", "PeerGoingAway", "PeerSettings", "StreamAborted",
    "StreamFinished", "WindowOpened",
]


def _raw_data_repr(data: bytes | None) -> str:
    """hyperframe's `_raw_data_repr` with identical output, hexlifying 11 bytes only:
    the output keeps 20 hex characters (10 bytes) and says "..." when there were more."""
    if not data:
        return "None"
    r = binascii.hexlify(data[:11]).decode("ascii")
    if len(r) > 20:
        r = r[:20] + "..."
    return "<hex:" + r + ">"


class _ReceivedDataFrame(hyperframe.frame.DataFrame):
    """A received DATA frame whose repr reads 11 bytes of body, not all of it.

    h2 builds `repr(frame)` eagerly for a trace log on every received frame, and
    hyperframe's DATA repr serializes the whole body and hexlifies it before keeping
    20 characters: a third of the CPU time of a bulk transfer with 1 MiB frames was
    spent there. Same text, for this connection's frames only (hyperframe untouched)."""

    def _body_repr(self) -> str:
        # The body is [pad length byte] data [padding zeros]; its first 11 bytes suffice.
        head = self.serialize_padding_data() + self.data[:11]
        return _raw_data_repr((head + b"\0" * self.pad_length)[:11])


class _FrameBuffer(h2.frame_buffer.FrameBuffer):
    """h2's frame parser, handing out DATA frames as _ReceivedDataFrame."""

    def __next__(self) -> hyperframe.frame.Frame:
        frame = super().__next__()
        if type(frame) is hyperframe.frame.DataFrame:
            # Frames have no __slots__: switching the class changes only the repr.
            frame.__class__ = _ReceivedDataFrame
        return frame


class _Connection(h2.connection.H2Connection):
    """h2's connection reading through _FrameBuffer; a _ReceivedDataFrame is handled
    exactly as a DataFrame (h2 dispatches on the exact class)."""

    def __init__(self, config: h2.config.H2Configuration) -> None:
        super().__init__(config=config)
        self.incoming_buffer = _FrameBuffer(server=not config.client_side)
        table = self._frame_dispatch_table
        table[_ReceivedDataFrame] = table[hyperframe.frame.DataFrame]


class H2Framing:
    def __init__(self, *, client_side: bool, settings: TunnelSettings) -> None:
        config = h2.config.H2Configuration(
            client_side=client_side, header_encoding=None,
            validate_outbound_headers=False, normalize_outbound_headers=False)
        self._conn = _Connection(config)
        self._settings = settings
        self._client_side = client_side

    def start(self) -> None:
        """Queue the connection preface, our SETTINGS and the big connection window."""
        s = self._settings
        local = {
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: s.stream_window,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: s.max_frame_size,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        }
        if not self._client_side:
            local[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = s.max_concurrent_streams
        self._conn.local_settings = h2.settings.Settings(
            client=self._client_side, initial_values=local)
        self._conn.initiate_connection()
        # h2 applies our MAX_FRAME_SIZE only once the peer ACKs it, and checks frames
        # against the value from the start of each receive_data call, so an ACK and a
        # big frame in one TLS record would fail. Accepting big frames early is safe.
        self._conn.max_inbound_frame_size = s.max_frame_size
        if s.connection_window > DEFAULT_WINDOW:
            self._conn.increment_flow_control_window(s.connection_window - DEFAULT_WINDOW)

    # ---- input --------------------------------------------------------------------

    def feed(self, data: bytes | memoryview) -> list[Event]:
        try:
            raw = self._conn.receive_data(bytes(data))
        except h2.exceptions.ProtocolError as exc:
            raise HboneProtocolError(f"HTTP/2 protocol error from peer: {exc}") from None
        events: list[Event] = []
        for ev in raw:
            if isinstance(ev, h2.events.DataReceived):
                assert ev.stream_id is not None and ev.data is not None
                if ev.data or ev.flow_controlled_length:  # skip the empty END_STREAM frame
                    events.append(DataArrived(ev.stream_id, ev.data,
                                              ev.flow_controlled_length or 0))
            elif isinstance(ev, h2.events.StreamEnded):
                assert ev.stream_id is not None
                events.append(StreamFinished(ev.stream_id))
            elif isinstance(ev, h2.events.WindowUpdated):
                events.append(WindowOpened(ev.stream_id or 0))
            elif isinstance(ev, h2.events.RequestReceived):
                assert ev.stream_id is not None
                events.append(connect_request(ev.stream_id, ev.headers or []))
            elif isinstance(ev, h2.events.ResponseReceived):
                assert ev.stream_id is not None
                events.append(Answered(ev.stream_id, response_status(ev.headers or [])))
            elif isinstance(ev, h2.events.StreamReset):
                assert ev.stream_id is not None
                events.append(StreamAborted(ev.stream_id, int(ev.error_code or 0)))
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                events.append(PeerSettings(self._conn.remote_settings.max_concurrent_streams))
                # A bigger initial window opens every stream's window at once.
                events.append(WindowOpened(0))
            elif isinstance(ev, h2.events.ConnectionTerminated):
                events.append(PeerGoingAway(ev.last_stream_id or 0, int(ev.error_code or 0)))
        return events


    # ---- output -------------------------------------------------------------------

    def open_connect(self, authority: str, headers: tuple[tuple[str, str], ...] = ()) -> int:
        """Queue a CONNECT for `authority`; returns the new stream id.

        Raises HboneProtocolError when this connection has no stream ids left."""
        try:
            stream_id = self._conn.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError:
            raise HboneProtocolError("connection has used all its stream ids") from None
        block = [(b":method", b"CONNECT"), (b":authority", authority.encode())]
        block += [(k.lower().encode(), v.encode()) for k, v in headers]
        self._conn.send_headers(stream_id, block)
        return stream_id

    def answer(self, stream_id: int, status: int, *, end_stream: bool) -> bool:
        """False when the stream is already gone (the client gave up first)."""
        try:
            self._conn.send_headers(stream_id, [(b":status", str(status).encode())],
                                    end_stream=end_stream)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return False
        return True

    def send_window(self, stream_id: int) -> int:
        try:
            return self._conn.local_flow_control_window(stream_id)
        except h2.exceptions.StreamClosedError:
            return 0

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> int:
        """Frame as much of `data` as the flow-control windows allow; returns bytes taken.

        END_STREAM rides on the frame carrying the last byte when all of it fits."""
        window = self.send_window(stream_id)
        take = min(window, len(data))
        if take <= 0:
            return 0
        frame = self._conn.max_outbound_frame_size
        view = memoryview(data)
        sent = 0
        while sent < take:
            n = min(frame, take - sent)
            last = end_stream and sent + n == len(data)
            chunk = data if n == len(data) else bytes(view[sent:sent + n])
            try:
                self._conn.send_data(stream_id, chunk, end_stream=last)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                break
            sent += n
        return sent

    def end_stream(self, stream_id: int) -> None:
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self._conn.end_stream(stream_id)

    def reset(self, stream_id: int, error_code: int = CANCEL) -> None:
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self._conn.reset_stream(stream_id, error_code)

    def acknowledge(self, stream_id: int, size: int) -> None:
        """Give `size` consumed bytes back to the peer's windows (WINDOW_UPDATE when due)."""
        if size > 0:
            # h2 credits the connection window even when the stream is already closed.
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._conn.acknowledge_received_data(size, stream_id)

    def go_away(self, error_code: int = 0) -> None:
        """Queue GOAWAY. h2 then refuses to send anything else, so callers send it
        only when no stream is left (or when abandoning the connection)."""
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._conn.close_connection(error_code)

    def output(self) -> bytes:
        return self._conn.data_to_send()

    def output_chunks(self) -> list[bytes]:
        data = self._conn.data_to_send()
        return [data] if data else []

    @property
    def peer_max_concurrent_streams(self) -> int:
        return int(self._conn.remote_settings.max_concurrent_streams)

    @property
    def open_outbound_streams(self) -> int:
        return int(self._conn.open_outbound_streams)


