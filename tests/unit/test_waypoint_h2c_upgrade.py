"""h2c smuggling: `Upgrade: h2c` forwarded by the waypoint would let a backend that
speaks h2c switch the connection to raw HTTP/2 after one allowed request, and every
later request on it (a DENYed DELETE) would reach the app unseen by L7 policy. As
Envoy, the waypoint never forwards an h2c upgrade: the request goes on as plain
HTTP/1.1 and so does the connection (each later request parsed and authorized);
WebSocket upgrades are still forwarded. Real sockets on loopback, no root."""

from __future__ import annotations

import socket

import anyio
import pytest

from waypoint.http1 import DownstreamInfo
from waypoint.messages import BodySource, RequestHead, Response
from waypoint.server import serve_stream


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        got = b""
        s.settimeout(2)
        try:
            while chunk := s.recv(65536):
                got += chunk
        except OSError:
            pass
        return got


async def _serve(data: bytes) -> tuple[list[RequestHead], bytes]:
    seen: list[RequestHead] = []

    async def app(head: RequestHead, body: BodySource, info: DownstreamInfo) -> Response:
        seen.append(head)
        return Response(200, [("content-length", "0")])

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def serve(stream: anyio.abc.SocketStream) -> None:
        await serve_stream(stream, app, DownstreamInfo(peer="test"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        got = await anyio.to_thread.run_sync(_exchange, port, data)
        tg.cancel_scope.cancel()
    return seen, got


H2C = (b"GET /items HTTP/1.1\r\nHost: catalog\r\nConnection: Upgrade, HTTP2-Settings\r\n"
       b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")


@pytest.mark.anyio
@pytest.mark.parametrize("upgrade", [b"h2c", b"H2C", b"websocket, h2c"])
async def test_an_h2c_upgrade_is_never_forwarded(upgrade: bytes) -> None:
    request = H2C.replace(b"Upgrade: h2c", b"Upgrade: " + upgrade)
    seen, _ = await _serve(request + b"DELETE /items HTTP/1.1\r\nHost: catalog\r\n"
                                     b"Connection: close\r\n\r\n")
    assert [h.method for h in seen] == ["GET", "DELETE"], seen
    forwarded = {k for k, _ in seen[0].headers}
    assert not forwarded & {"upgrade", "connection", "http2-settings"}, seen[0].headers


@pytest.mark.anyio
async def test_a_websocket_upgrade_is_still_forwarded() -> None:
    seen, _ = await _serve(b"GET /ws HTTP/1.1\r\nHost: catalog\r\nConnection: Upgrade\r\n"
                           b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    assert ("upgrade", "websocket") in seen[0].headers, seen[0].headers
