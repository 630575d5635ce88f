"""When HBONE output leaves: a send after a quiet moment at once, sends that follow
within `flush_gap` batched into one flush at the next loop turn, and nothing scheduled
while the connection dispatches what it read (it flushes once at its end). Real TLS
tunnels on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import socket
from pathlib import Path

import pytest

from mesh.hbone import HboneClientPool, HboneStream, TunnelSettings, relay
from mesh.hbone.errors import HboneSettingsError
from tests.hbone_helpers import echo, hbone_mesh, tcp_app


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    return ("asyncio", {"use_uvloop": True})


async def _streams(pool: HboneClientPool, mesh: object, app_port: int, n: int
                   ) -> list[HboneStream]:
    return [await pool.connect(mesh.client_tls,  # type: ignore[attr-defined]
                               ("127.0.0.1", mesh.server_port),  # type: ignore[attr-defined]
                               f"127.0.0.1:{app_port}") for _ in range(n)]


async def _echoed(stream: HboneStream, size: int) -> bytes:
    got = b""
    while len(got) < size:
        got += await asyncio.wait_for(stream.receive(), 5)
    return got


GAP = 0.05  # seconds: wide, so the test does not depend on the machine's speed


@pytest.mark.anyio
async def test_a_lone_send_leaves_at_once_and_one_right_behind_it_is_batched(
        tmp_path: Path) -> None:
    async with hbone_mesh(tmp_path) as mesh, tcp_app(echo) as app_port:
        pool = HboneClientPool(settings=TunnelSettings(flush_gap=GAP))
        try:
            a, b = await _streams(pool, mesh, app_port, 2)
            conn = a._conn
            await asyncio.sleep(2 * GAP)  # quiet
            at_once, batched = conn.flushes_at_once, conn.flushes_batched
            a.write(b"first")
            # Left the codec within the call: no loop turn between the read of a
            # message and its TLS write.
            assert conn.flushes_at_once == at_once + 1
            assert conn._framing.output_chunks() == []
            b.write(b"second")
            assert conn.flushes_batched == batched + 1  # right behind: waits for the batch
            assert await _echoed(a, 5) == b"first"
            assert await _echoed(b, 6) == b"second"
            # after a quiet moment, at once again
            await asyncio.sleep(2 * GAP)
            at_once = conn.flushes_at_once
            a.write(b"third")
            assert conn.flushes_at_once == at_once + 1
            assert await _echoed(a, 5) == b"third"
        finally:
            await pool.aclose()


@pytest.mark.anyio
async def test_an_infinite_gap_batches_every_send(tmp_path: Path) -> None:
    settings = TunnelSettings(flush_gap=math.inf)
    async with hbone_mesh(tmp_path) as mesh, tcp_app(echo) as app_port:
        pool = HboneClientPool(settings=settings)
        try:
            (a,) = await _streams(pool, mesh, app_port, 1)
            conn = a._conn
            await asyncio.sleep(0.05)
            at_once = conn.flushes_at_once
            a.write(b"x")
            assert conn.flushes_at_once == at_once
            assert await _echoed(a, 1) == b"x"
        finally:
            await pool.aclose()


class _Collect:
    """A stream sink (what the relay is): consumes each chunk during the callback."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.arrived = asyncio.Event()

    def data(self, data: bytes | memoryview) -> None:
        self.received += data
        self.arrived.set()

    def eof(self) -> None:
        self.arrived.set()

    def reset(self, error: Exception) -> None:
        self.arrived.set()


@pytest.mark.anyio
async def test_reading_data_schedules_no_flush_of_its_own(tmp_path: Path) -> None:
    """DATA delivered to a sink is acknowledged while the connection dispatches it; the
    acknowledgement leaves in the read's own flush, never in a flush a loop turn later.
    With an infinite gap every flush outside a read is counted as batched: only the
    writes may be."""
    async with hbone_mesh(tmp_path) as mesh, tcp_app(echo) as app_port:
        pool = HboneClientPool(settings=TunnelSettings(flush_gap=math.inf))
        try:
            (a,) = await _streams(pool, mesh, app_port, 1)
            conn = a._conn
            sink = _Collect()
            a.attach_sink(sink)
            payload = os.urandom(64 * 1024)
            await asyncio.sleep(0.05)
            for _ in range(20):
                sink.received.clear()
                batched = conn.flushes_batched
                a.write(payload)
                while len(sink.received) < len(payload):
                    sink.arrived.clear()
                    await asyncio.wait_for(sink.arrived.wait(), 5)
                assert bytes(sink.received) == payload
                assert conn.flushes_batched == batched + 1  # the write, nothing else
        finally:
            await pool.aclose()


@pytest.mark.anyio
async def test_big_reads_cross_the_relay_without_copies_and_arrive_intact(
        tmp_path: Path) -> None:
    """A relay's big TCP reads are encrypted straight from its read buffer, and DATA
    arriving from the tunnel is written to the socket straight from the tunnel's read
    buffer (both buffers are reused right after): 8 MiB through an echo come back
    byte for byte, and the counters show both in-place paths were taken."""
    loop = asyncio.get_running_loop()
    async with hbone_mesh(tmp_path) as mesh, tcp_app(echo) as app_port:
        pool = HboneClientPool()
        app, proxy_side = socket.socketpair()
        app.setblocking(False)
        try:
            (stream,) = await _streams(pool, mesh, app_port, 1)
            conn = stream._conn
            relaying = asyncio.ensure_future(relay(stream, proxy_side))
            payload = os.urandom(8 * 1024 * 1024 + 5)

            async def send() -> None:
                await loop.sock_sendall(app, payload)
                app.shutdown(socket.SHUT_WR)

            async def receive() -> bytes:
                got = bytearray()
                while chunk := await loop.sock_recv(app, 1 << 20):
                    got += chunk
                return bytes(got)

            sending = asyncio.ensure_future(send())
            got = await asyncio.wait_for(receive(), 30)
            await sending
            result = await asyncio.wait_for(relaying, 10)
            assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
            assert result.to_stream == result.from_stream == len(payload)
            assert not result.reset
            assert conn.bytes_sent_in_place > 0
            assert result.from_stream_in_place > 0
        finally:
            app.close()
            await pool.aclose()



@pytest.mark.parametrize("gap", [-1e-6, float("nan")])
def test_a_negative_or_nan_flush_gap_is_refused(gap: float) -> None:
    with pytest.raises(HboneSettingsError, match="flush_gap"):
        TunnelSettings(flush_gap=gap)
