"""HBONE liveness: the PING keepalive (sans-I/O and over real TLS on loopback) and the
CONNECT timeout with the phase it names (no root)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mesh.hbone import HboneClientPool, HboneRequest, HboneServer, HboneStreamReset
from mesh.hbone.errors import HboneKeepaliveTimeout, HboneSettingsError, HboneTunnelTimeout
from mesh.hbone.h2core import H2Core
from mesh.hbone.keepalive import Keepalive, KeepaliveAction, ping_frame
from mesh.hbone.settings import ENV_VARS, TunnelSettings
from mesh.identity import tls
from tests.hbone_helpers import SERVER_ID, echo, hbone_mesh, listen, tcp_app
from tests.identity_helpers import mint

WAIT, PING, DEAD = KeepaliveAction.WAIT, KeepaliveAction.PING, KeepaliveAction.DEAD


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    return ("asyncio", {"use_uvloop": True})


# ---- sans-I/O ----------------------------------------------------------------------------

def test_no_ping_while_frames_keep_arriving() -> None:
    ka = Keepalive(interval=10, timeout=5, last_received=0)
    for now in range(1, 100):
        ka.received(float(now))
        assert ka.poll(float(now)) == (WAIT, now + 10)
    assert ka.pings_sent == 0


def test_ping_after_interval_then_dead_after_timeout() -> None:
    ka = Keepalive(interval=10, timeout=5, last_received=0)
    assert ka.poll(9.99) == (WAIT, 10)
    assert ka.poll(10) == (PING, 15)
    assert ka.poll(12) == (WAIT, 15)  # a second poll does not send a second PING
    assert ka.pings_sent == 1
    assert ka.poll(14.99)[0] is WAIT
    assert ka.poll(15)[0] is DEAD


def test_any_frame_after_the_ping_counts_as_alive() -> None:
    ka = Keepalive(interval=10, timeout=5, last_received=0)
    assert ka.poll(10)[0] is PING
    ka.received(13)  # the ACK, or any frame: the path works
    assert ka.poll(15) == (WAIT, 23)  # not dead; the next PING an interval after it
    assert ka.poll(23) == (PING, 28)
    assert ka.opaque() == (2).to_bytes(8, "big")


def test_frame_in_the_same_clock_tick_as_the_ping_counts() -> None:
    """uvloop's clock moves in 1 ms steps: an ACK read in the PING's millisecond is
    an answer, not silence."""
    ka = Keepalive(interval=1, timeout=1, last_received=0)
    assert ka.poll(1)[0] is PING
    ka.received(1)
    assert ka.poll(2) == (PING, 3)  # answered: not dead at 2, the next round starts


def test_late_timer_still_declares_dead() -> None:
    """A loop stalled past the deadline must not PING again instead of failing."""
    ka = Keepalive(interval=1, timeout=1, last_received=0)
    assert ka.poll(1)[0] is PING
    assert ka.poll(50)[0] is DEAD


def test_ping_frame_is_answered_by_the_codec() -> None:
    """Our PING bytes are a valid frame: H2Core answers it with an ACK echoing them."""
    core = H2Core(client_side=True, settings=TunnelSettings())
    opaque = b"\x00\x00\x00\x00\x00\x00\x00\x07"
    assert core.feed(ping_frame(opaque)) == []
    assert core.output() == b"\x00\x00\x08\x06\x01\x00\x00\x00\x00" + opaque
    with pytest.raises(ValueError, match="8 opaque bytes"):
        ping_frame(b"short")


def test_settings_from_and_to_environment() -> None:
    s = TunnelSettings(connect_timeout=2, keepalive_interval=1.5, keepalive_timeout=0.5)
    env = s.env()
    assert set(env) == set(ENV_VARS.values())
    back = TunnelSettings.from_env(env)
    assert (back.connect_timeout, back.keepalive_interval, back.keepalive_timeout) == \
        (2, 1.5, 0.5)
    assert TunnelSettings.from_env({}) == TunnelSettings()
    assert TunnelSettings.from_env({}, keepalive_interval=0).keepalive is False
    with pytest.raises(HboneSettingsError, match="AMBIENT_TUNNEL_CONNECT_TIMEOUT"):
        TunnelSettings.from_env({"AMBIENT_TUNNEL_CONNECT_TIMEOUT": "soon"})
    with pytest.raises(HboneSettingsError, match="keepalive_timeout must be > 0"):
        TunnelSettings(keepalive_timeout=0)
    with pytest.raises(HboneSettingsError, match="keepalive_interval"):
        TunnelSettings(keepalive_interval=-1)


# ---- real TLS on loopback ----------------------------------------------------------------

FAST = TunnelSettings(keepalive_interval=0.3, keepalive_timeout=0.3, connect_timeout=1.0)


class Link:
    """A TCP forwarder between client and server that can be cut: while cut, neither
    direction moves (bytes wait in the kernel, as behind a dead link) and new
    connections are accepted but carry nothing."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.cut = False

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._pump(reader, up_w))
            tg.create_task(self._pump(up_r, writer))

    async def _pump(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                while self.cut:
                    await asyncio.sleep(0.02)
                w.write(data)
                await w.drain()
        except ConnectionError:
            pass
        finally:
            w.close()


@contextlib.asynccontextmanager
async def cuttable_link(target_port: int) -> AsyncIterator[tuple[Link, int]]:
    link = Link(target_port)
    server = await asyncio.start_server(link.handle, "127.0.0.1", 0)
    try:
        yield link, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


async def roundtrip(stream: object, data: bytes) -> bytes:
    from mesh.hbone import HboneStream
    assert isinstance(stream, HboneStream)
    await stream.send(data)
    return await asyncio.wait_for(stream.receive(), 5)


@pytest.mark.anyio
@pytest.mark.parametrize("framing", ["h2core", "h2"])
async def test_healthy_idle_connection_survives_many_keepalive_rounds(
        tmp_path: Path, framing: str) -> None:
    settings = TunnelSettings(keepalive_interval=0.2, keepalive_timeout=0.2, framing=framing)
    async with hbone_mesh(tmp_path, settings=settings) as mesh, tcp_app(echo) as app:
        pool = HboneClientPool(settings=settings)
        try:
            stream = await pool.connect(mesh.client_tls, ("127.0.0.1", mesh.server_port),
                                        f"127.0.0.1:{app}")
            assert await roundtrip(stream, b"one") == b"one"
            await asyncio.sleep(1.5)  # ~7 PING rounds, both sides, nothing else sent
            conn = pool.connections()[0]
            assert not conn.closed and conn.failure is None
            assert await roundtrip(stream, b"two") == b"two"
            again = await pool.connect(mesh.client_tls, ("127.0.0.1", mesh.server_port),
                                       f"127.0.0.1:{app}")
            assert await roundtrip(again, b"three") == b"three"
            assert pool.connections_opened == 1
            for s in (stream, again):
                await s.aclose()
        finally:
            await pool.aclose()


@pytest.mark.anyio
async def test_cut_link_kills_pooled_connection_then_pool_dials_anew(tmp_path: Path) -> None:
    async with hbone_mesh(tmp_path, settings=FAST) as mesh, tcp_app(echo) as app, \
            cuttable_link(mesh.server_port) as (link, port):
        pool = HboneClientPool(settings=FAST)
        dest = ("127.0.0.1", port)
        try:
            stream = await pool.connect(mesh.client_tls, dest, f"127.0.0.1:{app}")
            assert await roundtrip(stream, b"before") == b"before"
            server_conn = next(iter(mesh.server.connections))
            link.cut = True
            cut_at = time.monotonic()
            with pytest.raises(HboneStreamReset):
                await asyncio.wait_for(stream.receive(), 3)
            detected = time.monotonic() - cut_at
            assert detected <= 0.3 + 0.3 + 0.3, f"dead tunnel noticed after {detected:.2f}s"
            failure = stream.failure
            assert isinstance(failure, HboneKeepaliveTimeout)
            assert failure.peer == f"127.0.0.1:{port}"
            assert "keepalive" in str(failure) and f"127.0.0.1:{port}" in str(failure)
            assert pool.connections() == [], "the dead connection is still pooled"
            # The server side noticed too: its connection is gone, its reason recorded.
            await asyncio.wait_for(server_conn.lost, 2)
            assert isinstance(server_conn.failure, HboneKeepaliveTimeout)
            assert mesh.seen[0].failure is server_conn.failure  # what the handler logs

            # While cut: a new tunnel fails within the connect timeout, naming the phase.
            started = time.monotonic()
            with pytest.raises(HboneTunnelTimeout) as info:
                await pool.connect(mesh.client_tls, dest, f"127.0.0.1:{app}")
            took = time.monotonic() - started
            assert 0.9 <= took < 1.5, took
            assert info.value.phase == "TLS handshake"
            assert f"tunnel to 127.0.0.1:{port} timed out during TLS handshake" in \
                str(info.value)

            link.cut = False
            fresh = await pool.connect(mesh.client_tls, dest, f"127.0.0.1:{app}")
            assert await roundtrip(fresh, b"after") == b"after"
            assert pool.connections_opened == 2
            assert fresh.failure is None
            await fresh.aclose()
        finally:
            link.cut = False
            await pool.aclose()


@pytest.mark.anyio
async def test_pending_connect_on_a_dead_pooled_connection_fails_fast(tmp_path: Path) -> None:
    """The case users hit: a new connection goes to a pooled tunnel whose link just
    died. It fails with the keepalive's error, not after the app's own timeout."""
    settings = TunnelSettings(keepalive_interval=0.3, keepalive_timeout=0.3,
                              connect_timeout=3.0)
    async with hbone_mesh(tmp_path, settings=settings) as mesh, tcp_app(echo) as app, \
            cuttable_link(mesh.server_port) as (link, port):
        pool = HboneClientPool(settings=settings)
        dest = ("127.0.0.1", port)
        try:
            first = await pool.connect(mesh.client_tls, dest, f"127.0.0.1:{app}")
            await first.aclose()
            link.cut = True
            started = time.monotonic()
            with pytest.raises(HboneKeepaliveTimeout, match="keepalive"):
                await pool.connect(mesh.client_tls, dest, f"127.0.0.1:{app}")
            assert time.monotonic() - started < 1.0
        finally:
            link.cut = False
            await pool.aclose()


@pytest.mark.anyio
async def test_connect_timeout_when_tcp_accepts_but_tls_never_answers(tmp_path: Path) -> None:
    silent = listen()  # the kernel completes TCP handshakes; nobody ever speaks TLS
    port = silent.getsockname()[1]
    async with hbone_mesh(tmp_path) as mesh:
        pool = HboneClientPool(settings=TunnelSettings(connect_timeout=0.5))
        try:
            started = time.monotonic()
            with pytest.raises(HboneTunnelTimeout) as info:
                await pool.connect(mesh.client_tls, ("127.0.0.1", port), "127.0.0.1:80")
            took = time.monotonic() - started
        finally:
            await pool.aclose()
            silent.close()
    assert 0.45 <= took < 1.0, took
    err = info.value
    assert (err.phase, err.peer, err.timeout) == ("TLS handshake", f"127.0.0.1:{port}", 0.5)
    assert str(err) == f"tunnel to 127.0.0.1:{port} timed out during TLS handshake " \
                       "(after 0.5 s)"
    assert pool.connections() == []


@pytest.mark.anyio
async def test_connect_timeout_names_tcp_connect_and_connect_response(tmp_path: Path) -> None:
    async def never(host: str, port: int) -> socket.socket:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    hold = asyncio.Event()

    async def silent_handler(request: HboneRequest) -> None:
        await hold.wait()  # accepts the connection, never answers the CONNECT

    async with hbone_mesh(tmp_path) as mesh:
        pool = HboneClientPool(settings=TunnelSettings(connect_timeout=0.4), dial=never)
        try:
            with pytest.raises(HboneTunnelTimeout, match="during TCP connect"):
                await pool.connect(mesh.client_tls, ("127.0.0.1", 9), "127.0.0.1:80")
        finally:
            await pool.aclose()

        server_ck, bundle = mint(mesh.ca, SERVER_ID)
        server_ctx = tls.server_context(server_ck, bundle)
        server = HboneServer(lambda: server_ctx, silent_handler)
        lsock = listen()
        task = asyncio.ensure_future(server.serve(lsock))
        pool = HboneClientPool(settings=TunnelSettings(connect_timeout=0.4))
        try:
            with pytest.raises(HboneTunnelTimeout, match="during CONNECT response") as info:
                await pool.connect(mesh.client_tls, ("127.0.0.1", lsock.getsockname()[1]),
                                   "127.0.0.1:80")
            assert info.value.phase == "CONNECT response"
            conn = pool.connections()[0]
            assert not conn.closed and conn.active_streams == 0  # stream reset, tunnel kept
        finally:
            hold.set()
            await pool.aclose()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            lsock.close()


@pytest.mark.anyio
async def test_every_waiter_on_a_stalled_shared_dial_is_bounded(tmp_path: Path) -> None:
    """Tunnels to one peer share its dial (pooled); when that dial stalls, each caller
    still fails within its own connect timeout, with the peer named. (A waiter whose
    shared dial failed first may start its own: then it reports its own phase.)"""
    silent = listen()
    port = silent.getsockname()[1]
    async with hbone_mesh(tmp_path) as mesh:
        pool = HboneClientPool(settings=TunnelSettings(connect_timeout=0.4))
        started = time.monotonic()
        try:
            results = await asyncio.gather(
                *[pool.connect(mesh.client_tls, ("127.0.0.1", port), "127.0.0.1:80")
                  for _ in range(3)], return_exceptions=True)
        finally:
            await pool.aclose()
            silent.close()
    took = time.monotonic() - started
    assert took < 1.0, took
    assert all(isinstance(r, HboneTunnelTimeout) and r.peer == f"127.0.0.1:{port}"
               for r in results), results
    first = results[0]
    assert isinstance(first, HboneTunnelTimeout) and first.phase == "TLS handshake"
