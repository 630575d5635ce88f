"""What a framing core reports to the connection, and the HTTP/2 error codes HBONE
uses. Shared by both codecs (h2core.H2Core and the h2-based framing.H2Framing) so
either can sit behind HboneConnection."""

from __future__ import annotations

from dataclasses import dataclass

NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
CONNECT_ERROR = 0xA

DEFAULT_WINDOW = 65535


@dataclass(frozen=True, slots=True)
class ConnectRequested:
    stream_id: int
    method: str
    authority: str
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Answered:
    stream_id: int
    status: int


@dataclass(frozen=True, slots=True)
class DataArrived:
    """`flow_length` is what to acknowledge once consumed (payload plus any padding).
    H2Core may deliver one DATA frame in several pieces, as its bytes arrive, each a
    view of the bytes it was fed: valid until the caller of `feed` reuses its buffer
    (HboneConnection: the end of buffer_updated), so consumers copy what they keep."""

    stream_id: int
    data: bytes | memoryview
    flow_length: int


@dataclass(frozen=True, slots=True)
class StreamFinished:
    """The peer sent END_STREAM: it will send no more data on this stream."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamAborted:
    stream_id: int
    error_code: int


@dataclass(frozen=True, slots=True)
class WindowOpened:
    """Send window grew; stream_id 0 means the connection window (all streams)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class PeerSettings:
    max_concurrent_streams: int


@dataclass(frozen=True, slots=True)
class PeerGoingAway:
    last_stream_id: int
    error_code: int


Event = (ConnectRequested | Answered | DataArrived | StreamFinished | StreamAborted
         | WindowOpened | PeerSettings | PeerGoingAway)


def connect_request(stream_id: int, headers: list[tuple[bytes, bytes]] | list
                    ) -> ConnectRequested:
    """A request's HEADERS as the event both codecs report (pseudo-headers split off)."""
    method = authority = ""
    extra: list[tuple[str, str]] = []
    for name, value in headers:
        n = name.decode("latin-1") if isinstance(name, bytes) else name
        v = value.decode("latin-1") if isinstance(value, bytes) else value
        if n == ":method":
            method = v
        elif n == ":authority":
            authority = v
        elif not n.startswith(":"):
            extra.append((n, v))
    return ConnectRequested(stream_id, method, authority, tuple(extra))


def response_status(headers: list) -> int:
    """The :status of a response's HEADERS, 0 when missing or malformed."""
    for name, value in headers:
        if name in (b":status", ":status"):
            try:
                return int(value)
            except ValueError:
                break
    return 0
