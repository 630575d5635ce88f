"""Connections to backends: a pool of HTTP/1.1 keep-alive connections and HTTP/2
(h2c) multiplexed connections per endpoint, opened through a pluggable dialer: HBONE
to <pod ip>:15008 for endpoints in the mesh, plain TCP otherwise (and in tests).

Connection and pending-request limits (limits.py) are enforced here, per group (the
service whose TrafficPolicy sets them): beyond max_connections a request waits for
a connection to free up; beyond max_pending_requests it is refused at once."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, Protocol

import anyio
import anyio.abc
import structlog

from waypoint.errors import LimitExceededError, UpstreamConnectError, UpstreamResetError
from waypoint.http1 import Http1ClientConnection
from waypoint.http2 import Http2ClientConnection
from waypoint.limits import Admission, ConnectionLimits
from waypoint.messages import BodySource, RequestHead, Response

log = structlog.get_logger("waypoint.upstream")

Protocol_ = Literal["h1", "h2"]
IDLE_KEEP_S = 60.0


@dataclass(frozen=True)
class Endpoint:
    """One backend pod (or external address) and the port its app listens on."""

    address: str
    port: int
    workload: str = ""
    namespace: str = ""
    identity: str = ""  # spiffe://... of the pod, "" outside the mesh
    in_mesh: bool = False  # reachable through HBONE on 15008

    @cached_property
    def key(self) -> str:
        """ip:port ([v6]:port): computed once, it is looked up several times a request."""
        try:
            if ipaddress.ip_address(self.address).version == 6:
                return f"[{self.address}]:{self.port}"
        except ValueError:
            pass
        return f"{self.address}:{self.port}"


class Dialer(Protocol):
    async def __call__(self, endpoint: Endpoint) -> anyio.abc.ByteStream: ...


async def tcp_dial(endpoint: Endpoint) -> anyio.abc.ByteStream:
    """Plain TCP: backends outside the mesh, and loopback backends in tests."""
    return await anyio.connect_tcp(endpoint.address, endpoint.port)


@dataclass
class _Group:
    limits: ConnectionLimits | None
    idle: dict[str, list[tuple[Http1ClientConnection, float]]] = field(default_factory=dict)
    h2: dict[str, list[Http2ClientConnection]] = field(default_factory=dict)
    # Created only when a request waits for a connection to free up: every release
    # wakes it, and an anyio.Event per release cost a getpid() system call each
    # (asyncio.get_running_loop checks for a fork) -- 1 % of the waypoint's CPU.
    _freed: anyio.Event | None = None

    def wake(self) -> None:
        if self._freed is not None:
            self._freed.set()
            self._freed = None

    def freed(self) -> anyio.Event:
        if self._freed is None:
            self._freed = anyio.Event()
        return self._freed


class UpstreamPool:
    """Owns every backend connection; its task group (given by the server) runs the
    HTTP/2 read loops and request-body senders."""

    def __init__(self, dial: Dialer, task_group: anyio.abc.TaskGroup,
                 connect_timeout_s: float = 5.0) -> None:
        self._dial = dial
        self._tg = task_group
        self._connect_timeout = connect_timeout_s
        self._groups: dict[str, _Group] = {}
        self.opened = 0

    def _spawn(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._tg.start_soon(fn)

    def _group(self, name: str, limits: ConnectionLimits | None) -> _Group:
        g = self._groups.get(name)
        if g is None:
            g = self._groups[name] = _Group(limits)
        elif limits is not None and g.limits is not limits:
            g.limits = limits  # a new snapshot replaced the policy; counts restart
        return g

    async def request(self, group: str, limits: ConnectionLimits | None, endpoint: Endpoint,
                      protocol: Protocol_, head: RequestHead, body: BodySource) -> Response:
        g = self._group(group, limits)
        if protocol == "h2":
            return await self._request_h2(g, group, endpoint, head, body)
        return await self._request_h1(g, group, endpoint, head, body)

    async def _connect(self, g: _Group, endpoint: Endpoint) -> anyio.abc.ByteStream:
        if g.limits is not None:
            g.limits.connection_opened()
        try:
            with anyio.fail_after(self._connect_timeout):
                stream = await self._dial(endpoint)
        except TimeoutError:
            self._closed(g)
            raise UpstreamConnectError(endpoint.key, "connect timed out") from None
        except (OSError, anyio.BrokenResourceError) as e:
            self._closed(g)
            raise UpstreamConnectError(endpoint.key, f"connect failed: {e}") from None
        except BaseException:
            self._closed(g)
            raise
        self.opened += 1
        return stream

    def _closed(self, g: _Group) -> None:
        if g.limits is not None:
            g.limits.connection_closed()
        g.wake()

    async def _admit(self, g: _Group, group: str, has_idle: Callable[[], bool]) -> None:
        """Wait until a connection may be used or opened; raise when the queue is full."""
        lim = g.limits
        if lim is None:
            return
        queued = False
        try:
            while True:
                decision = lim.admit(has_idle())
                if decision is Admission.CONNECT:
                    return
                if not queued and self._evict_idle(g):
                    continue
                if decision is Admission.REFUSE and not queued:
                    raise LimitExceededError("maxPendingRequests", group)
                if not queued:
                    lim.enqueue()
                    queued = True
                await g.freed().wait()
        finally:
            if queued:
                lim.dequeue()

    def _evict_idle(self, g: _Group) -> bool:
        """At the connection limit, an idle connection to another endpoint gives way."""
        for conns in g.idle.values():
            if conns:
                conn, _ = conns.pop(0)
                self._tg.start_soon(conn.aclose)
                self._closed(g)
                return True
        return False

    # -- HTTP/1.1 ---------------------------------------------------------------------

    def _take_idle(self, g: _Group, key: str) -> Http1ClientConnection | None:
        conns = g.idle.get(key)
        now = time.monotonic()
        while conns:
            conn, since = conns.pop()
            if now - since < IDLE_KEEP_S and not conn.closed:
                return conn
            self._tg.start_soon(conn.aclose)
            self._closed(g)
        return None

    async def _request_h1(self, g: _Group, group: str, endpoint: Endpoint, head: RequestHead,
                          body: BodySource) -> Response:
        key = endpoint.key
        for fresh_retry in (False, True):
            if g.limits is not None:
                await self._admit(g, group, lambda: bool(g.idle.get(key)))
            conn = None if fresh_retry else self._take_idle(g, key)
            reused = conn is not None
            if conn is None:
                stream = await self._connect(g, endpoint)
                conn = Http1ClientConnection(
                    stream, key, lambda c, ok: self._released(g, key, c, ok), self._spawn)
            try:
                return await conn.request(head, body)
            except UpstreamResetError:
                # A kept-alive connection the backend closed while idle: try once on a
                # new one, when nothing of the request can have been consumed.
                if reused and not head.has_body and not fresh_retry:
                    continue
                raise
        raise AssertionError("unreachable")

    def _released(self, g: _Group, key: str, conn: Http1ClientConnection, reusable: bool
                  ) -> None:
        if conn.detached:
            self._closed(g)  # upgraded: the relay owns and closes the socket
            return
        exhausted = g.limits is not None and g.limits.connection_exhausted(conn.requests)
        if reusable and not exhausted and not conn.closed:
            g.idle.setdefault(key, []).append((conn, time.monotonic()))
            g.wake()
            return
        self._tg.start_soon(conn.aclose)
        self._closed(g)

    # -- HTTP/2 -----------------------------------------------------------------------

    async def _request_h2(self, g: _Group, group: str, endpoint: Endpoint, head: RequestHead,
                          body: BodySource) -> Response:
        key = endpoint.key

        def usable() -> Http2ClientConnection | None:
            for c in g.h2.get(key, []):
                if c.has_capacity:
                    return c
            return None

        if g.limits is not None:
            await self._admit(g, group, lambda: usable() is not None)
        conn = usable()
        if conn is None:
            stream = await self._connect(g, endpoint)
            conn = Http2ClientConnection(stream, key, self._spawn,
                                         lambda c: self._h2_closed(g, key, c))
            g.h2.setdefault(key, []).append(conn)
            await conn.start()
        return await conn.request(head, body)

    def _h2_closed(self, g: _Group, key: str, conn: Http2ClientConnection) -> None:
        conns = g.h2.get(key, [])
        if conn in conns:
            conns.remove(conn)
            self._closed(g)

    async def aclose(self) -> None:
        for g in self._groups.values():
            for conns in g.idle.values():
                for conn, _ in conns:
                    await conn.aclose()
            for h2conns in g.h2.values():
                for c in list(h2conns):
                    await c.aclose()
        self._groups.clear()
