"""HTTP/2 rapid reset (CVE-2023-44487) against the waypoint's h2c server: a client that
opens streams and resets them before their answer makes the waypoint start a request
(an upstream call, an access-log line) per frame pair while it never waits for a
reply. Red team: 20,000 HEADERS+RST_STREAM pairs from one pod in 0.3 s made the demo
waypoint run ~6,300 requests, open ~2,000 upstream streams to the app and write 3.5 MB
of log, on one connection. Like Envoy's premature-reset guard, the server now ends such
a connection with GOAWAY ENHANCE_YOUR_CALM. Real sockets on loopback, no root."""

from __future__ import annotations

import socket
import struct

import anyio
import hpack
import pytest

from waypoint.http1 import DownstreamInfo
from waypoint.http2 import PREMATURE_RESETS_ALLOWED
from waypoint.messages import BodySource, RequestHead, Response
from waypoint.server import serve_stream

ENHANCE_YOUR_CALM = 0xB
GOAWAY = 7


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(
        ">I", stream) + payload


def _rapid_reset(port: int, pairs: int) -> bytes:
    """Send `pairs` HEADERS(END_STREAM)+RST_STREAM pairs, return what the server sent."""
    enc = hpack.Encoder()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, b""))
        try:
            for i in range(pairs):
                sid = 2 * i + 1
                head = enc.encode([(":method", "GET"), (":scheme", "http"),
                                   (":path", "/"), (":authority", "app")])
                s.sendall(_frame(1, 0x5, sid, head) + _frame(3, 0, sid, struct.pack(">I", 8)))
        except OSError:
            pass  # the server hung up: what it said before is what we check
        got = b""
        s.settimeout(3)
        try:
            while chunk := s.recv(65536):
                got += chunk
        except OSError:
            pass
        return got


def _goaway_codes(data: bytes) -> list[int]:
    codes, i = [], 0
    while i + 9 <= len(data):
        length, kind = int.from_bytes(data[i:i + 3], "big"), data[i + 3]
        if kind == GOAWAY:
            codes.append(int.from_bytes(data[i + 13:i + 17], "big"))
        i += 9 + length
    return codes


@pytest.mark.anyio
async def test_a_rapid_reset_flood_is_cut_off_with_enhance_your_calm() -> None:
    calls = 0

    async def slow_upstream(head: RequestHead, body: BodySource,
                            info: DownstreamInfo) -> Response:
        nonlocal calls
        calls += 1
        await anyio.sleep(1)  # an app call the reset cancels
        return Response(200, [])

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def serve(stream: anyio.abc.SocketStream) -> None:
        await serve_stream(stream, slow_upstream, DownstreamInfo(peer="test"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        got = await anyio.to_thread.run_sync(_rapid_reset, port, 5000)
        tg.cancel_scope.cancel()
    print(f"5000 reset streams: {calls} handler calls, GOAWAY codes {_goaway_codes(got)}")
    assert ENHANCE_YOUR_CALM in _goaway_codes(got)
    assert calls <= 2 * PREMATURE_RESETS_ALLOWED
