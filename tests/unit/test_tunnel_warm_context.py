"""The node proxy builds a pod's server TLS context when it starts serving the pod's
HBONE listener, not inside the first caller's handshake (~1.3 ms of a cold tunnel).
A pod without a certificate yet still serves, and refuses handshakes (fail closed)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from mesh.hbone import HboneClientPool, HboneRequest, HboneTunnelError, StaticTls
from mesh.identity.spiffe import SpiffeId
from nodeagent.certs import CertificateUnavailableError
from nodeagent.proxy.pod_listeners import PodEndpoint
from nodeagent.proxy.tunnel import Tunnels
from tests.hbone_helpers import SERVER_ID, listen, mtls_pair, new_ca

POD = PodEndpoint("demo", "server", "uid-1", "", "127.0.0.1", "", str(SERVER_ID))


class Materials:
    """TLS material for one pod: a server context, or none yet (not issued)."""

    def __init__(self, server_ctx: ssl.SSLContext | None, client: StaticTls) -> None:
        self.server_ctx = server_ctx
        self.client = client
        self.builds = 0

    def client_tls(self, identity: SpiffeId) -> StaticTls:
        return self.client

    def certificate_error(self, identity: SpiffeId) -> str | None:
        return None if self.server_ctx else "not issued"

    def server_context_provider(self, identity: SpiffeId) -> Callable[[], ssl.SSLContext]:
        def provide() -> ssl.SSLContext:
            self.builds += 1
            if self.server_ctx is None:
                raise CertificateUnavailableError(f"no certificate for {identity} yet")
            return self.server_ctx
        return provide


async def refuse(request: HboneRequest) -> None:
    await request.reject(403)


@contextlib.asynccontextmanager
async def serving(materials: Materials) -> AsyncIterator[int]:
    lsock: socket.socket = listen()
    task = asyncio.ensure_future(Tunnels(materials).serve(POD, [lsock], refuse))
    try:
        await asyncio.sleep(0.05)
        yield lsock.getsockname()[1]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        lsock.close()


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    return ("asyncio", {"use_uvloop": True})


@pytest.mark.anyio
async def test_server_context_is_built_before_the_first_connection(tmp_path: Path) -> None:
    server_ctx, client = mtls_pair(new_ca(tmp_path / "ca"))
    materials = Materials(server_ctx, client)
    async with serving(materials):
        assert materials.builds == 1  # at serve start, no connection has come


@pytest.mark.anyio
async def test_a_pod_without_certificate_serves_and_refuses_handshakes(tmp_path: Path) -> None:
    _, client = mtls_pair(new_ca(tmp_path / "ca"))
    materials = Materials(None, client)
    async with serving(materials) as port:
        pool = HboneClientPool(connect_timeout=2.0)
        try:
            with pytest.raises(HboneTunnelError):
                await pool.connect(client, ("127.0.0.1", port), "127.0.0.1:80")
        finally:
            await pool.aclose()
    assert materials.builds >= 2  # tried at serve start, and again for the connection
