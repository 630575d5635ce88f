"""HBONE client + server over real TLS on loopback (no root)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from mesh.hbone import (
    HboneClientPool,
    HboneConnectError,
    HboneRequest,
    HboneServer,
    HboneStreamReset,
)
from tests.hbone_helpers import CLIENT_ID, SERVER_ID, echo, hbone_mesh, tcp_app


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    return ("asyncio", {"use_uvloop": True})


async def read_all(stream: object) -> bytes:
    from mesh.hbone import HboneStream
    assert isinstance(stream, HboneStream)
    parts = []
    while True:
        try:
            parts.append(await stream.receive())
        except anyio.EndOfStream:
            return b"".join(parts)


@pytest.mark.anyio
async def test_echo_through_tunnel_with_half_close(tmp_path: Path) -> None:
    async with hbone_mesh(tmp_path) as mesh, tcp_app(echo) as app_port:
        pool = HboneClientPool()
        try:
            stream = await pool.connect(mesh.client_tls, ("127.0.0.1", mesh.server_port),
                                        f"127.0.0.1:{app_port}")
            assert stream.peer_identity == SERVER_ID
            payload = os.urandom(3 * 1024 * 1024 + 17)
            await stream.send(payload)
            await stream.send_eof()  # END_STREAM -> app sees EOF -> app FIN -> END_STREAM
            got = await asyncio.wait_for(read_all(stream), 10)
            assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
            await stream.aclose()
        finally:
            await pool.aclose()
        req = mesh.seen[0]
        assert req.peer_identity == CLIENT_ID
        assert req.authority == f"127.0.0.1:{app_port}"
        assert req.target == ("127.0.0.1", app_port)


@pytest.mark.anyio
async def test_refused_upstream_is_503(tmp_path: Path) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    async with hbone_mesh(tmp_path) as mesh:
        pool = HboneClientPool()
        try:
            with pytest.raises(HboneConnectError) as info:
                await pool.connect(mesh.client_tls, ("127.0.0.1", mesh.server_port),
                                   f"127.0.0.1:{port}")
            assert info.value.status == 503
            # the connection survives a refused stream and is reused
            with pytest.raises(HboneConnectError):
                await pool.connect(mesh.client_tls, ("127.0.0.1", mesh.server_port),
                                   f"127.0.0.1:{port}")
            assert pool.connections_opened == 1
        finally:
            await pool.aclose()


@pytest.mark.anyio
async def test_policy_reject_403_and_bad_authority_400(tmp_path: Path) -> None:
    async with hbone_mesh(tmp_path, allow=lambda r: r.target[1] != 9) as mesh:
        pool = HboneClientPool()
        try:
            with pytest.raises(HboneConnectError) as info:
                await pool.connect(mesh.client_tls, ("127.0.0.1", mesh.server_port),
                                   "127.0.0.1:9")
            assert info.value.status == 403
            with pytest.raises(HboneConnectError) as info:
                await pool.connect(mesh.client_tls, ("127.0.0.1", mesh.server_port),
                                   "example.com:80")
            assert info.value.status == 400
        finally:
            await pool.aclose()


@pytest.mark.anyio
async def test_upstream_reset_resets_stream(tmp_path: Path) -> None:
    async def rst(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        sock = writer.get_extra_info("socket")
        import struct
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async with hbone_mesh(tmp_path) as mesh, tcp_app(rst) as app_port:
        pool = HboneClientPool()
        try:
            stream = await pool.connect(mesh.client_tls, ("127.0.0.1", mesh.server_port),
                                        f"127.0.0.1:{app_port}")
            await stream.send(b"x")
            with pytest.raises(HboneStreamReset):
                await asyncio.wait_for(read_all(stream), 5)
        finally:
            await pool.aclose()


@pytest.mark.anyio
async def test_streams_share_one_pooled_connection(tmp_path: Path) -> None:
    async with hbone_mesh(tmp_path) as mesh, tcp_app(echo) as app_port:
        pool = HboneClientPool()
        try:
            async def one(i: int) -> bytes:
                s = await pool.connect(mesh.client_tls, ("127.0.0.1", mesh.server_port),
                                       f"127.0.0.1:{app_port}")
                await s.send(f"hello {i}".encode())
                await s.send_eof()
                return await read_all(s)

            results = await asyncio.gather(*(one(i) for i in range(50)))
            assert results == [f"hello {i}".encode() for i in range(50)]
            assert pool.connections_opened == 1
            unpooled = HboneClientPool(pooled=False)
            try:
                for _ in range(5):
                    s = await unpooled.connect(mesh.client_tls, ("127.0.0.1", mesh.server_port),
                                               f"127.0.0.1:{app_port}")
                    await s.send(b"u")
                    await s.send_eof()
                    assert await read_all(s) == b"u"
                assert unpooled.connections_opened == 5
                await asyncio.sleep(0.1)
                assert len(unpooled.connections()) == 0  # each closed with its stream
            finally:
                await unpooled.aclose()
        finally:
            await pool.aclose()


async def reset_streams(tmp_path: Path, handler: Callable[[HboneRequest], Awaitable[None]],
                        ended: asyncio.Event, times: int) -> list[str]:
    """Open `times` streams to a server running `handler`, reset each after a write,
    and return the events it logged; `handler` sets `ended` when its stream is done."""
    from structlog.testing import capture_logs

    from tests.hbone_helpers import hbone_serving, mtls_pair
    from tests.identity_helpers import new_ca

    server_ctx, client = mtls_pair(new_ca(tmp_path / "ca"))
    server = HboneServer(lambda: server_ctx, handler)
    async with hbone_serving(server) as port:
        pool = HboneClientPool()
        try:
            with capture_logs() as logs:
                for _ in range(times):
                    ended.clear()
                    stream = await pool.connect(client, ("127.0.0.1", port), "127.0.0.1:9")
                    await stream.send(b"x" * 100)
                    stream.reset()
                    await asyncio.wait_for(ended.wait(), 5)
                await asyncio.sleep(0.05)
        finally:
            await pool.aclose()
    return [entry["event"] for entry in logs]


@pytest.mark.anyio
async def test_a_peer_resetting_streams_is_no_error_and_logs_no_traceback(
        tmp_path: Path) -> None:
    """A client that resets its streams in a loop is ending them, not failing us: one
    debug line each, no `hbone.handler_failed` traceback (which a hostile pod could use
    to grow the logs)."""
    ended = asyncio.Event()

    async def read_until_reset(request: HboneRequest) -> None:
        stream = await request.accept()
        try:
            while True:
                await stream.receive()
        finally:
            ended.set()

    events = await reset_streams(tmp_path, read_until_reset, ended, 20)
    assert "hbone.handler_failed" not in events
    assert events.count("hbone.stream_ended_by_peer") == 20


@pytest.mark.anyio
async def test_a_reset_wrapped_in_an_exception_group_logs_no_traceback(
        tmp_path: Path) -> None:
    """The same reset reaching the server inside an ExceptionGroup (the waypoint's
    HTTP/1 and HTTP/2 servers read and write in anyio task groups) is the same
    ordinary end. Found by the red team: ~3 KB of traceback per connection."""
    ended = asyncio.Event()

    async def read_in_a_task_group(request: HboneRequest) -> None:
        stream = await request.accept()

        async def drain() -> None:
            while True:
                await stream.receive()

        try:
            async with anyio.create_task_group() as tg:  # as waypoint/http2.py serves
                tg.start_soon(drain)
        finally:
            ended.set()

    events = await reset_streams(tmp_path, read_in_a_task_group, ended, 10)
    assert "hbone.handler_failed" not in events
    assert events.count("hbone.stream_ended_by_peer") == 10
