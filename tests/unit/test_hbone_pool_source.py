"""The HBONE pool keeps one connection per source address (issue 18.7): two pods of
one identity never share a tunnel, so the far side sees each one's own address.
Real TLS on loopback, sources 127.0.0.2 and 127.0.0.3 (no root)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from mesh.hbone import HboneClientPool
from mesh.hbone.client import Dialer
from tests.hbone_helpers import echo, hbone_mesh, tcp_app


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    return ("asyncio", {"use_uvloop": True})


def dial_from(source: str) -> Dialer:
    async def dial(host: str, port: int) -> socket.socket:
        sock = socket.socket()
        sock.setblocking(False)
        try:
            sock.bind((source, 0))
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        return sock
    return dial


@pytest.mark.anyio
async def test_one_identity_two_sources_two_connections(tmp_path: Path) -> None:
    async with hbone_mesh(tmp_path) as mesh, tcp_app(echo) as app_port:
        pool = HboneClientPool()
        try:
            for source in ("127.0.0.2", "127.0.0.3", "127.0.0.2", "127.0.0.3"):
                stream = await pool.connect(
                    mesh.client_tls, ("127.0.0.1", mesh.server_port), f"127.0.0.1:{app_port}",
                    dial=dial_from(source), source_address=source)
                await stream.aclose()
        finally:
            await pool.aclose()
    assert [r.peer_address[0] for r in mesh.seen] == [
        "127.0.0.2", "127.0.0.3", "127.0.0.2", "127.0.0.3"]
    assert pool.connections_opened == 2  # still pooled per source
