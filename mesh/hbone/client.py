"""HBONE client: a pool of mTLS HTTP/2 connections, one CONNECT stream per tunnel.

Connections are keyed by (source identity, destination ip, port, source address) and
shared by up to the peer's stream limit: two pods with one identity never share a
connection, so the far side sees each one's own address (as ztunnel's WorkloadKey).
A connection made with a TLS context that is no longer current (the source
certificate was renewed) takes no new streams and closes once its last stream ends,
so rotation never drops a live tunnel and new tunnels always present the current
certificate.

Opening a tunnel is bounded as a whole by TunnelSettings.connect_timeout (dial, TLS,
the peer's SETTINGS, the CONNECT answer); a timeout names the phase it stopped in.
CONNECT leaves right behind our preface and SETTINGS, without waiting a round trip for
the peer's SETTINGS (RFC 9113 §3.4; stream limits and windows start at the protocol
defaults and the peer's SETTINGS adjust them); the connection still takes no answer
before the peer's SETTINGS (HboneConnection fails it), and a cold tunnel saves one
round trip and one event-loop wake-up.
A connection that dies (keepalive timeout, reset) leaves the pool at once, so the
next tunnel dials anew.

`warm` opens a connection ahead of need (no CONNECT): the full handshake and the
peer's SVID check apply, a peer that is not the expected identity is closed and never
pooled, and an unused warmed connection closes after the idle timeout like any other."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from mesh.hbone.connection import HboneConnection
from mesh.hbone.errors import (
    HboneConnectError,
    HboneProtocolError,
    HboneStreamRefused,
    HboneTunnelError,
    HboneTunnelTimeout,
)
from mesh.hbone.settings import TunnelSettings
from mesh.hbone.stream import HboneStream
from mesh.identity.spiffe import SpiffeId

log = structlog.get_logger(__name__)


class HboneWrongPeer(HboneTunnelError):
    """The peer's verified SVID is not the identity the destination should have."""

Dialer = Callable[[str, int], Awaitable[socket.socket]]
PoolKey = tuple[str, str, int, str]  # identity, destination ip, port, source address


class TlsSource(Protocol):
    """Who the tunnel speaks for: an identity and its current client TLS context."""

    @property
    def identity(self) -> str: ...

    def client_context(self) -> ssl.SSLContext: ...


@dataclass(frozen=True)
class StaticTls:
    """A TlsSource with a fixed context, or a provider called per new connection."""

    identity: str
    context: ssl.SSLContext | Callable[[], ssl.SSLContext]

    def client_context(self) -> ssl.SSLContext:
        ctx = self.context
        return ctx if isinstance(ctx, ssl.SSLContext) else ctx()


async def default_dial(host: str, port: int) -> socket.socket:
    """Plain non-blocking TCP connect in the caller's own network namespace."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await loop.sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class _Phase:
    """Where a tunnel setup is, for the timeout message. A setup waiting for another
    one's dial to the same peer (pooled) is wherever that dial is."""

    def __init__(self) -> None:
        self.name = "TCP connect"
        self.waiting_on: _Phase | None = None
        # The connection whose SETTINGS have not come yet while CONNECT is answered.
        self.settings_of: HboneConnection | None = None

    def describe(self) -> str:
        if self.waiting_on is not None:
            return self.waiting_on.describe()
        conn = self.settings_of
        if conn is not None and not conn.ready.done():
            return "HTTP/2 settings"
        return self.name


class HboneClientPool:
    def __init__(self, *, settings: TunnelSettings | None = None, dial: Dialer = default_dial,
                 pooled: bool = True, max_streams_per_connection: int = 1024,
                 idle_timeout: float = 90.0, connect_timeout: float | None = None) -> None:
        """`connect_timeout` overrides settings.connect_timeout."""
        self.settings = settings or TunnelSettings()
        self._dial = dial
        self._pooled = pooled
        self._max_streams = max_streams_per_connection
        self._idle_timeout = idle_timeout
        self._connect_timeout = (connect_timeout if connect_timeout is not None
                                 else self.settings.connect_timeout)
        self._conns: dict[PoolKey, list[HboneConnection]] = {}
        self._dialing: dict[PoolKey, tuple[asyncio.Future[None], _Phase]] = {}
        self._idle_timers: dict[HboneConnection, asyncio.TimerHandle] = {}
        self._key_of: dict[HboneConnection, PoolKey] = {}
        self._current_ctx: dict[str, ssl.SSLContext] = {}
        self._closed = False
        self.connections_opened = 0
        # Warmed connections that have not carried a stream yet.
        self._warm_unused: set[HboneConnection] = set()
        self.warmed = 0  # connections opened by `warm`
        self.warmed_used = 0  # ... of which later carried a tunnel
        self.warm_refused = 0  # ... refused: the peer was not the expected identity
        self.foreground_setups = 0  # tunnels being opened (`connect` running), not warming
        self.last_setup_end = 0.0  # loop time the last of them ended

    def connections(self, source_identity: str | None = None) -> list[HboneConnection]:
        return [c for key, conns in self._conns.items() for c in conns
                if source_identity is None or key[0] == source_identity]

    async def connect(self, source: TlsSource, dest: tuple[str, int], authority: str, *,
                      dial: Dialer | None = None, expected_peer: SpiffeId | None = None,
                      headers: tuple[tuple[str, str], ...] = (),
                      source_address: str = "") -> HboneStream:
        """Open a tunnel to `authority` (the original ip:port) through the HBONE server at
        `dest`, presenting `source`'s certificate, on a connection of `source_address`
        (the address `dial` connects from; connections are not shared across it).

        Raises HboneConnectError for a non-2xx answer, HboneTunnelTimeout when the
        whole setup takes longer than the connect timeout, HboneTunnelError when the
        connection cannot be made or the peer is not `expected_peer`."""
        phase = _Phase()
        self.foreground_setups += 1
        try:
            async with asyncio.timeout(self._connect_timeout):
                return await self._connect(source, dest, authority, phase, dial, expected_peer,
                                           headers, source_address)
        except TimeoutError:
            raise HboneTunnelTimeout(phase.describe(), self._connect_timeout,
                                     peer=f"{dest[0]}:{dest[1]}") from None
        finally:
            self.foreground_setups -= 1
            self.last_setup_end = asyncio.get_running_loop().time()

    async def _connect(self, source: TlsSource, dest: tuple[str, int], authority: str,
                       phase: _Phase, dial: Dialer | None, expected_peer: SpiffeId | None,
                       headers: tuple[tuple[str, str], ...],
                       source_address: str = "") -> HboneStream:
        if self._closed:
            raise HboneTunnelError("the HBONE pool is closed", peer=f"{dest[0]}:{dest[1]}")
        ctx = source.client_context()
        key = (source.identity, dest[0], dest[1], source_address)
        if self._current_ctx.get(source.identity) is not ctx:
            self._current_ctx[source.identity] = ctx
            self._retire_stale(source.identity, ctx)
        for attempt in range(3):
            phase.name = "TCP connect"
            conn = await self._connection_for(key, ctx, dial or self._dial, phase,
                                              expected_peer)
            if expected_peer is not None and conn.peer_identity != expected_peer:
                raise HboneTunnelError(
                    f"peer is {conn.peer_identity}, expected {expected_peer}",
                    peer=conn.peer_label)
            try:
                stream, answer = conn.open_stream(authority, headers)
            except HboneProtocolError:
                conn.go_away()  # out of stream ids: retire it, use a fresh connection
                continue
            self._cancel_idle(conn)
            if conn in self._warm_unused:
                self._warm_unused.discard(conn)
                self.warmed_used += 1
            phase.name = "CONNECT response"
            phase.settings_of = conn
            try:
                status = await answer
            except HboneStreamRefused:
                conn.going_away = True  # the peer drains it; nothing was processed
                if attempt == 2:
                    raise
                continue
            except BaseException:
                stream.reset()
                raise
            break
        else:
            raise HboneTunnelError("no usable connection after 3 attempts",
                                   peer=f"{dest[0]}:{dest[1]}")
        if not 200 <= status < 300:
            stream.reset()
            raise HboneConnectError(status, conn.peer_label, authority)
        return stream

    async def _connection_for(self, key: PoolKey, ctx: ssl.SSLContext, dial: Dialer,
                              phase: _Phase, expected_peer: SpiffeId | None = None
                              ) -> HboneConnection:
        while True:
            if self._pooled:
                conn = self._usable(key, ctx)
                if conn is not None:
                    return conn
                pending = self._dialing.get(key)
                if pending is not None:
                    phase.waiting_on = pending[1]  # kept if the timeout strikes here
                    await asyncio.shield(pending[0])
                    phase.waiting_on = None
                    continue
            return await self._dial_new(key, ctx, dial, phase, expected_peer)

    def _usable(self, key: PoolKey, ctx: ssl.SSLContext) -> HboneConnection | None:
        for conn in self._conns.get(key, ()):
            if (not conn.closed and not conn.going_away and conn.ssl_context is ctx
                    and conn.active_streams < min(conn.peer_max_streams, self._max_streams)):
                return conn
        return None

    def quiet_for(self, seconds: float) -> bool:
        """No tunnel has been opened for a real connection in the last `seconds` and
        none is being opened now (background work such as warming waits for this)."""
        return self.foreground_setups == 0 and \
            asyncio.get_running_loop().time() - self.last_setup_end >= seconds

    async def warm(self, source: TlsSource, dest: tuple[str, int], *,
                   dial: Dialer | None = None, expected_peer: SpiffeId | None = None,
                   source_address: str = "") -> bool:
        """Open a pooled connection to `dest` ahead of need, sending no CONNECT, so the
        next tunnel there is pooled. False when one is already pooled or being dialled.

        The handshake and the SVID checks are those of `connect`; a peer that is not
        `expected_peer` raises HboneTunnelError and its connection is closed, never
        pooled (fail closed). Bounded by the connect timeout."""
        if self._closed or not self._pooled:
            return False
        ctx = source.client_context()
        key = (source.identity, dest[0], dest[1], source_address)
        if self._current_ctx.get(source.identity) is not ctx:
            self._current_ctx[source.identity] = ctx
            self._retire_stale(source.identity, ctx)
        if self._usable(key, ctx) is not None or key in self._dialing:
            return False
        phase = _Phase()
        try:
            async with asyncio.timeout(self._connect_timeout):
                conn = await self._dial_new(key, ctx, dial or self._dial, phase, expected_peer)
        except TimeoutError:
            raise HboneTunnelTimeout(phase.describe(), self._connect_timeout,
                                     peer=f"{dest[0]}:{dest[1]}") from None
        except HboneTunnelError as exc:
            if isinstance(exc, HboneWrongPeer):
                self.warm_refused += 1
            raise
        if self._closed:  # closed while the handshake ran: nothing may outlive aclose
            conn.close()
            return False
        self.warmed += 1
        if conn.active_streams == 0:  # a tunnel may have taken it already
            self._warm_unused.add(conn)
            self._on_idle(conn)  # idle from birth: the idle timeout applies
        return True

    async def _dial_new(self, key: PoolKey, ctx: ssl.SSLContext, dial: Dialer,
                        phase: _Phase, expected_peer: SpiffeId | None = None
                        ) -> HboneConnection:
        """Dial, TLS handshake, SVID checks; the connection joins the pool."""
        loop = asyncio.get_running_loop()
        marker: asyncio.Future[None] = loop.create_future()
        if self._pooled:
            self._dialing[key] = (marker, phase)
        peer = (key[1], key[2])
        label = f"{key[1]}:{key[2]}"
        try:
            phase.name = "TCP connect"
            try:
                sock = await dial(key[1], key[2])
            except OSError as exc:
                raise HboneTunnelError(f"cannot connect: {exc.strerror or exc}",
                                       peer=label) from None
            conn = HboneConnection(client_side=True, settings=self.settings,
                                   peer_address=peer, on_idle=self._on_idle,
                                   on_lost=self._on_lost)
            conn.ssl_context = ctx
            phase.name = "TLS handshake"
            try:
                # The overall connect timeout bounds it; asyncio's own would say less.
                await loop.create_connection(
                    lambda: conn, sock=sock, ssl=ctx, server_hostname="",
                    ssl_handshake_timeout=max(self.settings.handshake_timeout,
                                              self._connect_timeout + 1))
            except (OSError, ssl.SSLError) as exc:
                sock.close()
                raise HboneTunnelError(f"TLS handshake failed: {exc}", peer=label) from None
            except BaseException:
                sock.close()
                raise
            if conn.ready.done() and (failed := conn.ready.exception()) is not None:
                conn.abort()  # refused in connection_made (ALPN, peer certificate)
                raise failed
            if expected_peer is not None and conn.peer_identity != expected_peer:
                # Never pooled: nothing may reuse a connection to the wrong peer.
                conn.abort()
                log.warning("hbone.unexpected_peer", peer=label, source=key[0],
                            peer_identity=str(conn.peer_identity), expected=str(expected_peer))
                raise HboneWrongPeer(f"peer is {conn.peer_identity}, expected {expected_peer}",
                                     peer=label)
            # Not waiting for the peer's SETTINGS: the CONNECT goes out with ours.
        finally:
            if key in self._dialing and self._dialing[key][0] is marker:
                del self._dialing[key]
            marker.set_result(None)
        self._conns.setdefault(key, []).append(conn)
        self._key_of[conn] = key
        self.connections_opened += 1
        log.debug("hbone.connected", peer=label, source=key[0], peer_identity=str(
            conn.peer_identity))
        return conn

    def _on_idle(self, conn: HboneConnection) -> None:
        key = self._key_of.get(conn)
        stale = key is None or self._current_ctx.get(key[0]) is not conn.ssl_context
        if not self._pooled or conn.going_away or stale:
            conn.close()
            return
        loop = asyncio.get_running_loop()
        self._cancel_idle(conn)
        self._idle_timers[conn] = loop.call_later(self._idle_timeout, self._close_idle, conn)

    def _retire_stale(self, identity: str, ctx: ssl.SSLContext) -> None:
        """The source's certificate changed: idle old connections close now, busy ones
        once their last stream ends (see _on_idle)."""
        for conn in self.connections(identity):
            if conn.ssl_context is not ctx:
                self._cancel_idle(conn)
                conn.go_away()  # closes at once if idle, else after its last stream

    def _close_idle(self, conn: HboneConnection) -> None:
        self._idle_timers.pop(conn, None)
        if conn.active_streams == 0:
            conn.close()

    def _cancel_idle(self, conn: HboneConnection) -> None:
        timer = self._idle_timers.pop(conn, None)
        if timer is not None:
            timer.cancel()

    def _on_lost(self, conn: HboneConnection) -> None:
        self._cancel_idle(conn)
        self._warm_unused.discard(conn)
        key = self._key_of.pop(conn, None)
        if key is not None:
            conns = self._conns.get(key, [])
            if conn in conns:
                conns.remove(conn)
            if not conns:
                self._conns.pop(key, None)

    async def aclose(self) -> None:
        """Close every connection (GOAWAY, then close); streams still open are reset."""
        self._closed = True
        conns = self.connections()
        for conn in conns:
            self._cancel_idle(conn)
            conn.close()
        if conns:
            await asyncio.wait([c.lost for c in conns], timeout=5)
