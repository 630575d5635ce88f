"""Loopback HBONE fixtures: a CA, certificates, an HBONE server in front of TCP apps."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from mesh.hbone import (
    HboneClientPool,
    HboneError,
    HboneRequest,
    HboneServer,
    StaticTls,
    TlsSource,
    relay,
    reset_socket,
)
from mesh.hbone.settings import TunnelSettings
from mesh.identity import tls
from mesh.identity.ca import CertificateAuthority
from mesh.identity.spiffe import SpiffeId
from tests.identity_helpers import mint, new_ca

CLIENT_ID = SpiffeId.for_workload("shop", "cart")
SERVER_ID = SpiffeId.for_workload("shop", "payments")


def listen(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def dial_app(host: str, port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def relay_handler(seen: list[HboneRequest] | None = None,
                  allow: Callable[[HboneRequest], bool] | None = None
                  ) -> Callable[[HboneRequest], Awaitable[None]]:
    """What the node proxy does inbound: optional policy, dial the app, relay, or 503."""

    async def handle(request: HboneRequest) -> None:
        if seen is not None:
            seen.append(request)
        if allow is not None and not allow(request):
            await request.reject(403)
            return
        try:
            app = await dial_app(*request.target)
        except OSError:
            await request.reject(503)
            return
        stream = await request.accept()
        await relay(stream, app)

    return handle


def mtls_pair(ca: CertificateAuthority, server_id: SpiffeId = SERVER_ID,
              client_id: SpiffeId = CLIENT_ID) -> tuple[ssl.SSLContext, StaticTls]:
    """The two ends of one mutual-TLS tunnel, certificates from `ca`: the server's TLS
    context as `server_id` and the client's TLS source as `client_id`."""
    server_ck, bundle = mint(ca, server_id)
    client_ck, _ = mint(ca, client_id)
    return (tls.server_context(server_ck, bundle),
            StaticTls(str(client_id), tls.client_context(client_ck, bundle)))


@contextlib.asynccontextmanager
async def hbone_serving(server: HboneServer) -> AsyncIterator[int]:
    """`server` serving on a loopback port (yielded) until the block ends; then the
    serving task is cancelled and awaited and the socket closed."""
    lsock = listen()
    task = asyncio.ensure_future(server.serve(lsock))
    try:
        yield lsock.getsockname()[1]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        lsock.close()


@dataclass
class Mesh:
    ca: CertificateAuthority
    client_tls: StaticTls
    server_port: int
    server: HboneServer
    seen: list[HboneRequest] = field(default_factory=list)


@contextlib.asynccontextmanager
async def hbone_mesh(tmp: Path, *, settings: TunnelSettings | None = None,
                     allow: Callable[[HboneRequest], bool] | None = None,
                     ca: CertificateAuthority | None = None) -> AsyncIterator[Mesh]:
    ca = ca or new_ca(tmp / "ca")
    server_ctx, client = mtls_pair(ca)
    seen: list[HboneRequest] = []
    server = HboneServer(lambda: server_ctx, relay_handler(seen, allow), settings=settings)
    async with hbone_serving(server) as port:
        yield Mesh(ca, client, port, server, seen)


@contextlib.asynccontextmanager
async def tcp_app(handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                    Awaitable[None]]) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0, limit=1 << 20, backlog=4096)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo until EOF, then half-close: exercises FIN propagation both ways."""
    try:
        while data := await reader.read(1 << 20):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def outbound_proxy(pool: HboneClientPool, source: TlsSource, dest: tuple[str, int],
                         authority: str) -> AsyncIterator[int]:
    """What the node proxy does outbound (minus eBPF): accept the app's connection,
    open a tunnel for it and relay; a refused tunnel resets the app's connection."""
    lsock = listen()
    tasks: set[asyncio.Task[None]] = set()

    async def one(app: socket.socket) -> None:
        try:
            stream = await pool.connect(source, dest, authority)
        except HboneError:
            reset_socket(app)
            return
        await relay(stream, app)

    async def accept_loop() -> None:
        loop = asyncio.get_running_loop()
        while True:
            app, _ = await loop.sock_accept(lsock)
            task = asyncio.ensure_future(one(app))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    acceptor = asyncio.ensure_future(accept_loop())
    try:
        yield lsock.getsockname()[1]
    finally:
        acceptor.cancel()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(acceptor, *tasks, return_exceptions=True)
        lsock.close()
