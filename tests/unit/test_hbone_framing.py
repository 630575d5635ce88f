"""The sans-I/O HTTP/2 framing, client and server wired back to back in memory."""

from __future__ import annotations

import hyperframe.frame
from hypothesis import given
from hypothesis import strategies as st

from mesh.hbone.framing import (
    Answered,
    ConnectRequested,
    DataArrived,
    Event,
    H2Framing,
    PeerSettings,
    StreamAborted,
    StreamFinished,
    _FrameBuffer,
    _raw_data_repr,
    _ReceivedDataFrame,
)
from mesh.hbone.server import parse_authority
from mesh.hbone.settings import MIB, TunnelSettings


def pair(settings: TunnelSettings | None = None) -> tuple[H2Framing, H2Framing]:
    s = settings or TunnelSettings()
    client, server = H2Framing(client_side=True, settings=s), H2Framing(client_side=False,
                                                                        settings=s)
    client.start()
    server.start()
    exchange(client, server)
    return client, server


def exchange(client: H2Framing, server: H2Framing) -> tuple[list[Event], list[Event]]:
    at_client: list[Event] = []
    at_server: list[Event] = []
    while True:
        c, s = client.output(), server.output()
        if not c and not s:
            return at_client, at_server
        if c:
            at_server += server.feed(c)
        if s:
            at_client += client.feed(s)


def test_settings_exchanged() -> None:
    client = H2Framing(client_side=True, settings=TunnelSettings(max_concurrent_streams=77))
    server = H2Framing(client_side=False, settings=TunnelSettings(max_concurrent_streams=77))
    client.start()
    server.start()
    at_client, _ = exchange(client, server)
    assert PeerSettings(77) in at_client
    assert client.peer_max_concurrent_streams == 77


def test_connect_answer_data_and_half_close() -> None:
    client, server = pair()
    sid = client.open_connect("10.0.0.5:8080", (("x-trace", "abc"),))
    _, at_server = exchange(client, server)
    assert at_server == [ConnectRequested(sid, "CONNECT", "10.0.0.5:8080", (("x-trace", "abc"),))]
    server.answer(sid, 200, end_stream=False)
    payload = bytes(range(256)) * 4096  # 1 MiB
    assert client.send_data(sid, payload) == len(payload)  # 16 MiB window: all at once
    client.end_stream(sid)
    at_client, at_server = exchange(client, server)
    assert Answered(sid, 200) in at_client
    got = b"".join(e.data for e in at_server if isinstance(e, DataArrived))
    assert got == payload
    # large frames: 1 MiB arrives in one DATA frame, not 64 frames of 16 KiB
    assert len([e for e in at_server if isinstance(e, DataArrived)]) == 1
    assert StreamFinished(sid) in at_server


def test_flow_control_stops_sender_until_acknowledged() -> None:
    client, server = pair(TunnelSettings(stream_window=64 * 1024, connection_window=MIB))
    sid = client.open_connect("10.0.0.5:80")
    exchange(client, server)
    server.answer(sid, 200, end_stream=False)
    exchange(client, server)
    data = b"x" * (200 * 1024)
    sent = client.send_data(sid, data)
    assert sent == 64 * 1024
    assert client.send_data(sid, data[sent:]) == 0  # window exhausted
    _, at_server = exchange(client, server)
    received = sum(e.flow_length for e in at_server if isinstance(e, DataArrived))
    server.acknowledge(sid, received)
    exchange(client, server)
    assert client.send_window(sid) == 64 * 1024


def test_reset_reaches_peer() -> None:
    client, server = pair()
    sid = client.open_connect("10.0.0.5:80")
    exchange(client, server)
    server.reset(sid, 8)
    at_client, _ = exchange(client, server)
    assert StreamAborted(sid, 8) in at_client


def test_error_status_ends_stream() -> None:
    client, server = pair()
    sid = client.open_connect("10.0.0.5:80")
    exchange(client, server)
    server.answer(sid, 503, end_stream=True)
    at_client, _ = exchange(client, server)
    assert Answered(sid, 503) in at_client and StreamFinished(sid) in at_client


@given(st.binary(max_size=64))
def test_cheap_frame_repr_is_identical(data: bytes) -> None:
    assert _raw_data_repr(data) == hyperframe.frame._raw_data_repr(data)


@given(st.binary(max_size=64), st.integers(0, 30), st.booleans())
def test_received_data_frame_reprs_as_hyperframe_does(data: bytes, pad: int,
                                                        end: bool) -> None:
    flags = (["PADDED"] if pad else []) + (["END_STREAM"] if end else [])
    theirs = hyperframe.frame.DataFrame(1, data, flags=flags, pad_length=pad)
    ours = _ReceivedDataFrame(1, data, flags=flags, pad_length=pad)
    assert repr(ours) == repr(theirs).replace("DataFrame", "_ReceivedDataFrame", 1)


def test_hyperframe_is_left_alone() -> None:
    """No monkeypatch: importing framing changes nothing in hyperframe or h2."""
    import h2.frame_buffer

    assert hyperframe.frame._raw_data_repr.__module__ == "hyperframe.frame"
    assert hyperframe.frame.DataFrame._body_repr is hyperframe.frame.Frame._body_repr
    assert h2.frame_buffer.FrameBuffer.__next__.__module__ == "h2.frame_buffer"


def test_received_data_frames_take_the_cheap_repr_and_h2s_data_path() -> None:
    """The connection parses DATA as _ReceivedDataFrame and h2 handles it as DATA, so
    the cheap repr is the one h2 calls and flow control and events are unchanged."""
    buffer = _FrameBuffer(server=False)
    buffer.max_frame_size = 1 << 20
    buffer.add_data(hyperframe.frame.DataFrame(1, b"x" * 100_000).serialize()
                    + hyperframe.frame.PingFrame(0, b"12345678").serialize())
    assert [type(f) for f in buffer] == [_ReceivedDataFrame, hyperframe.frame.PingFrame]

    client, server = pair(TunnelSettings(max_frame_size=1 << 20))
    assert isinstance(server._conn.incoming_buffer, _FrameBuffer)
    sid = client.open_connect("10.0.0.5:80")
    exchange(client, server)
    server.answer(sid, 200, end_stream=False)
    exchange(client, server)
    assert client.send_data(sid, b"x" * 100_000, end_stream=True) == 100_000
    _, at_server = exchange(client, server)
    assert sum(len(e.data) for e in at_server if isinstance(e, DataArrived)) == 100_000
    assert StreamFinished(sid) in at_server


def test_parse_authority() -> None:
    assert parse_authority("10.1.2.3:8080") == ("10.1.2.3", 8080)
    assert parse_authority("[fd00::1]:443") == ("fd00::1", 443)
    for bad in ("example.com:80", "10.1.2.3", "10.1.2.3:0", "10.1.2.3:70000", ":80",
                "10.1.2.3:http"):
        assert parse_authority(bad) is None
