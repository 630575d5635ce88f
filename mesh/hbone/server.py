"""HBONE server: accepts mTLS HTTP/2 connections on a socket the caller listens on
(inside a pod's network namespace) and hands each CONNECT to a handler.

The TLS context comes from a provider called per accepted connection, so a renewed
certificate applies to new connections while established ones carry on. Each
connection owns its handler tasks; they are cancelled when it goes away."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from mesh.hbone.connection import HboneConnection
from mesh.hbone.errors import HboneStreamReset, HboneTunnelError
from mesh.hbone.framing import ConnectRequested
from mesh.hbone.relay import reset_socket
from mesh.hbone.settings import TunnelSettings
from mesh.hbone.stream import HboneStream
from mesh.identity.spiffe import SpiffeId

log = structlog.get_logger(__name__)

ContextProvider = Callable[[], ssl.SSLContext]


def parse_authority(authority: str) -> tuple[str, int] | None:
    """`ip:port` or `[v6]:port` as HBONE requires (no host names); None if malformed."""
    host, sep, port = authority.rpartition(":")
    if not sep or not port.isdigit():
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    port_no = int(port)
    if not 0 < port_no < 65536:
        return None
    return str(ip), port_no


@dataclass
class HboneRequest:
    """A CONNECT the handler must accept (then relay) or reject with a status."""

    authority: str
    target: tuple[str, int]
    peer_identity: SpiffeId
    peer_address: tuple[str, int]
    headers: tuple[tuple[str, str], ...]
    _conn: HboneConnection = field(repr=False)
    _event: ConnectRequested = field(repr=False)
    _stream: HboneStream = field(repr=False)
    stream: HboneStream | None = field(default=None, repr=False)
    status: int | None = None

    @property
    def failure(self) -> HboneTunnelError | None:
        """Why the connection carrying this request died (keepalive timeout, ...), if
        it did: a reset tunnel's cause for logs and metrics."""
        return self._conn.failure

    async def accept(self) -> HboneStream:
        """Answer 200 and return the tunnel's byte stream (bytes the client sent early
        are already buffered in it)."""
        if self.status is not None:
            raise RuntimeError(f"CONNECT {self.authority} already answered {self.status}")
        self.status = 200
        if not self._conn.answer(self._event.stream_id, 200):
            self._stream.on_reset(0)
        self.stream = self._stream
        return self._stream

    async def reject(self, status: int = 503) -> None:
        """Answer a non-2xx status (403 denied, 503 upstream refused, ...) and end it."""
        if not 300 <= status < 600:
            raise ValueError(f"reject needs a 3xx-5xx status, not {status}")
        if self.status is not None:
            return
        self.status = status
        self._conn.answer(self._event.stream_id, status)
        self._stream.discard()


Handler = Callable[[HboneRequest], Awaitable[None]]
Admit = Callable[[str], Callable[[], None] | None]
"""Per accepted connection, given the peer address: a release (idempotent) to call when
the connection ends (handshake failed or connection lost), or None: refused, reset now."""


def _nothing() -> None:
    """The release of a server without a per-peer cap."""


class HboneServer:
    def __init__(self, ssl_context_provider: ContextProvider, handler: Handler, *,
                 settings: TunnelSettings | None = None, grace: float = 0.0,
                 admit: Admit | None = None) -> None:
        """`grace`: on shutdown, seconds established tunnels get to finish (drain).
        `admit`: caps connections per peer address, counting TLS handshakes in
        progress and established tunnels alike (a peer that never finishes its
        handshakes holds descriptors too)."""
        self._provider = ssl_context_provider
        self._admit = admit
        self.grace = grace
        self._handler = handler
        self.settings = settings or TunnelSettings()
        self._connections: set[HboneConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.handshake_failures = 0

    @property
    def connections(self) -> set[HboneConnection]:
        return set(self._connections)

    async def serve(self, listening_socket: socket.socket) -> None:
        """Accept until cancelled; on the way out send GOAWAY, cancel handlers, close."""
        loop = asyncio.get_running_loop()
        listening_socket.setblocking(False)
        try:
            while True:
                try:
                    sock, addr = await loop.sock_accept(listening_socket)
                except (ConnectionAbortedError, InterruptedError):
                    continue
                except OSError as exc:
                    if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS,
                                         errno.ENOMEM):
                        raise
                    # Out of descriptors or memory: keep serving what is established
                    # and try again shortly instead of dying.
                    log.error("hbone.accept_failed", error=str(exc))
                    await asyncio.sleep(0.1)
                    continue
                release: Callable[[], None] = _nothing
                if self._admit is not None:
                    admitted = self._admit(str(addr[0]).split("%")[0])
                    if admitted is None:  # over the peer's cap: reset, never handshake
                        reset_socket(sock)
                        continue
                    release = admitted
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._spawn(self._start(sock, (addr[0], addr[1]), release))
        finally:
            await self._shutdown()

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _start(self, sock: socket.socket, addr: tuple[str, int],
                     release: Callable[[], None] = _nothing) -> None:
        loop = asyncio.get_running_loop()
        try:
            ctx = self._provider()
        except Exception as exc:
            log.error("hbone.no_tls_context", peer=f"{addr[0]}:{addr[1]}", error=str(exc))
            sock.close()
            release()
            return

        def lost(c: HboneConnection) -> None:
            self._connections.discard(c)
            release()
        conn = HboneConnection(client_side=False, settings=self.settings, peer_address=addr,
                               on_request=self._on_request, on_lost=lost)
        conn.ssl_context = ctx
        try:
            await loop.connect_accepted_socket(
                lambda: conn, sock, ssl=ctx,
                ssl_handshake_timeout=self.settings.handshake_timeout)
        except BaseException as exc:  # cancelled at shutdown too: never leak a count
            sock.close()
            release()
            if not isinstance(exc, (OSError, ssl.SSLError, TimeoutError, ConnectionError)):
                raise
            self.handshake_failures += 1
            log.info("hbone.handshake_failed", peer=f"{addr[0]}:{addr[1]}", error=str(exc))
            return
        if not conn.closed:
            self._connections.add(conn)
        else:
            release()

    def _on_request(self, conn: HboneConnection, ev: ConnectRequested) -> None:
        target = parse_authority(ev.authority)
        if ev.method != "CONNECT" or target is None or conn.peer_identity is None:
            status = 405 if ev.method != "CONNECT" else 400
            log.info("hbone.bad_request", peer=conn.peer_label, method=ev.method,
                     authority=ev.authority, status=status)
            conn.answer(ev.stream_id, status)
            return
        # Register the stream now so data the client sends before our answer is kept.
        stream = conn.register_stream(ev)
        request = HboneRequest(ev.authority, target, conn.peer_identity, conn.peer_address,
                               ev.headers, conn, ev, stream)
        self._spawn(self._run_handler(request))

    async def _run_handler(self, request: HboneRequest) -> None:
        try:
            await self._handler(request)
        except asyncio.CancelledError:
            if request.stream is not None:
                request.stream.reset()
            raise
        except Exception as e:
            if _ended_by_peer(e):
                # The peer reset its stream or its connection died: an ordinary end,
                # decided by the peer, even when it reaches us inside an ExceptionGroup
                # (the waypoint serves HTTP in task groups). One quiet line, no
                # traceback — a client resetting streams in a loop must not be able to
                # grow the logs (it can at debug level only).
                log.debug("hbone.stream_ended_by_peer", authority=request.authority,
                          peer=str(request.peer_identity), reason=str(e))
            else:
                log.exception("hbone.handler_failed", authority=request.authority,
                              peer=str(request.peer_identity))
                if request.stream is not None:
                    request.stream.reset()
        finally:
            if request.status is None:
                await request.reject(503)
        if request.stream is not None:
            await request.stream.aclose()

    async def _shutdown(self) -> None:
        for conn in list(self._connections):
            conn.go_away()
        tasks = list(self._tasks)
        if tasks and self.grace > 0:  # drain: established tunnels may finish first
            await asyncio.wait(tasks, timeout=self.grace)
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
        conns = list(self._connections)
        for conn in conns:
            conn.close()  # handlers were cancelled: their streams are reset already
        if conns:
            await asyncio.wait([c.lost for c in conns], timeout=2)

    async def aclose(self) -> None:
        await self._shutdown()


def _ended_by_peer(error: BaseException) -> bool:
    """A peer reset or a dead tunnel, bare or as every leaf of an ExceptionGroup."""
    if isinstance(error, BaseExceptionGroup):
        return all(_ended_by_peer(e) for e in error.exceptions)
    return isinstance(error, (HboneStreamReset, HboneTunnelError))
