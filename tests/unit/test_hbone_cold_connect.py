"""A cold tunnel: the client sends CONNECT right after its preface and SETTINGS, without
waiting a round trip for the peer's SETTINGS (RFC 9113 §3.4 allows it), yet still takes
no answer from a peer whose first frame is not SETTINGS. Real TLS on loopback; the far
side is a hand-written HTTP/2 server so the frame order is exactly what each test says."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from mesh.hbone import HboneClientPool, HboneTunnelError
from mesh.hbone.errors import HboneTunnelTimeout
from mesh.hbone.settings import TunnelSettings
from mesh.identity import tls
from mesh.identity.errors import CertificateError
from tests.hbone_helpers import SERVER_ID, mtls_pair, new_ca

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS, HEADERS, END_HEADERS = 0x4, 0x1, 0x4
EMPTY_SETTINGS = bytes([0, 0, 0, SETTINGS, 0, 0, 0, 0, 0])


def status_200(stream_id: int) -> bytes:
    """HEADERS :status 200 (HPACK static index 8) with END_HEADERS."""
    return bytes([0, 0, 1, HEADERS, END_HEADERS]) + stream_id.to_bytes(4, "big") + b"\x88"


async def read_until_connect(reader: asyncio.StreamReader) -> int:
    """Consume the client's preface and frames up to its first HEADERS; its stream id."""
    assert await reader.readexactly(len(PREFACE)) == PREFACE
    while True:
        head = await reader.readexactly(9)
        await reader.readexactly(int.from_bytes(head[:3], "big"))
        if head[3] == HEADERS:
            return int.from_bytes(head[5:9], "big") & 0x7FFFFFFF


Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_h2_server(ctx: ssl.SSLContext, behaviour: Behaviour) -> AsyncIterator[int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            await behaviour(reader, writer)
            await reader.read()  # hold the connection until the client closes it
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    return ("asyncio", {"use_uvloop": True})


@pytest.mark.anyio
@pytest.mark.parametrize("framing", ["h2core", "h2"])
async def test_connect_is_sent_before_the_peers_settings(tmp_path: Path, framing: str) -> None:
    """The peer sends its SETTINGS only once it has our CONNECT: a client that waits
    for the SETTINGS first would stall here until its connect timeout."""
    server_ctx, client = mtls_pair(new_ca(tmp_path / "ca"))

    async def settings_after_connect(reader: asyncio.StreamReader,
                                     writer: asyncio.StreamWriter) -> None:
        sid = await read_until_connect(reader)
        writer.write(EMPTY_SETTINGS + status_200(sid))
        await writer.drain()

    async with raw_h2_server(server_ctx, settings_after_connect) as port:
        pool = HboneClientPool(settings=TunnelSettings(framing=framing), connect_timeout=2.0)
        try:
            stream = await pool.connect(client, ("127.0.0.1", port), "10.0.0.1:80",
                                        expected_peer=SERVER_ID)
            assert stream.peer_identity == SERVER_ID
            await stream.aclose()
        finally:
            await pool.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("framing", ["h2core", "h2"])
async def test_an_answer_before_the_peers_settings_is_refused(tmp_path: Path, framing: str) -> None:
    """A peer whose first frame is not SETTINGS is no HTTP/2 server: its 200 must not
    open a tunnel (fail closed), and the error says so at once, not after a timeout."""
    server_ctx, client = mtls_pair(new_ca(tmp_path / "ca"))

    async def answer_without_settings(reader: asyncio.StreamReader,
                                      writer: asyncio.StreamWriter) -> None:
        sid = await read_until_connect(reader)
        writer.write(status_200(sid) + EMPTY_SETTINGS)
        await writer.drain()

    async with raw_h2_server(server_ctx, answer_without_settings) as port:
        pool = HboneClientPool(settings=TunnelSettings(framing=framing), connect_timeout=3.0)
        try:
            with pytest.raises(HboneTunnelError) as info:
                await pool.connect(client, ("127.0.0.1", port), "10.0.0.1:80")
            assert not isinstance(info.value, HboneTunnelTimeout)
            assert "SETTINGS" in str(info.value)
            # The failed connection is aborted and leaves the pool: nothing reuses it.
            await asyncio.wait_for(asyncio.gather(*(c.lost for c in pool.connections())), 2)
            assert pool.connections() == []
        finally:
            await pool.aclose()


@pytest.mark.anyio
async def test_a_silent_peer_times_out_in_the_settings_phase(tmp_path: Path) -> None:
    """TLS completes but no HTTP/2 frame ever comes: the timeout still names the phase
    the tunnel stopped in, though CONNECT was already sent."""
    server_ctx, client = mtls_pair(new_ca(tmp_path / "ca"))

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_until_connect(reader)

    async with raw_h2_server(server_ctx, silent) as port:
        pool = HboneClientPool(connect_timeout=0.5)
        try:
            with pytest.raises(HboneTunnelTimeout) as info:
                await pool.connect(client, ("127.0.0.1", port), "10.0.0.1:80")
            assert info.value.phase == "HTTP/2 settings"
        finally:
            await pool.aclose()


@pytest.mark.anyio
async def test_peer_identity_is_parsed_once_per_certificate(tmp_path: Path) -> None:
    """Later connections presenting the same certificate reuse the parsed SVID; the
    chain is still verified by OpenSSL on every handshake, and the trust-domain check
    still applies to the cached identity."""
    server_ctx, client = mtls_pair(new_ca(tmp_path / "ca"))

    async def settings_first(reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        writer.write(EMPTY_SETTINGS)
        sid = await read_until_connect(reader)
        writer.write(status_200(sid))
        await writer.drain()

    tls.svid_cache_clear()
    async with raw_h2_server(server_ctx, settings_first) as port:
        pool = HboneClientPool(pooled=False)
        try:
            for _ in range(3):
                stream = await pool.connect(client, ("127.0.0.1", port), "10.0.0.1:80")
                assert stream.peer_identity == SERVER_ID
                await stream.aclose()
        finally:
            await pool.aclose()
    info = tls.svid_cache_info()
    assert (info.misses, info.hits) == (1, 2)


def test_a_cached_svid_is_still_checked_against_the_trust_domain(tmp_path: Path) -> None:
    """The cache is keyed by (certificate, trust domain): a certificate accepted for
    cluster.local is not thereby accepted for another trust domain."""
    server_ctx, client = mtls_pair(new_ca(tmp_path / "ca"))
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    cli = client.client_context().wrap_bio(c_in, c_out, server_side=False)
    srv = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(5):
        for side in (cli, srv):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    tls.svid_cache_clear()
    assert tls.peer_identity(cli) == SERVER_ID
    assert tls.peer_identity(cli) == SERVER_ID
    assert tls.svid_cache_info().hits == 1
    with pytest.raises(CertificateError, match="trust domain"):
        tls.peer_identity(cli, "other.example")
