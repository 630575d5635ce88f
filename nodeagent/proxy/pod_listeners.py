"""The listeners the node proxy holds inside one enrolled pod's network namespace.

15001 (outbound capture, loopback v4 + v6), 15006 (inbound plaintext capture, handed
to the eBPF sk_lookup program), 15008 (inbound HBONE). They live exactly as long as
the pod's enrollment; each accepted socket is handed, raw, to a handler task.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog

from ebpf.constants import HBONE_PORT, INBOUND_PORT, OUTBOUND_PORT
from mesh.runtime.netns import netns_cookie
from nodeagent.listener_store import Listeners
from nodeagent.proxy.streams import listening_socket

log = structlog.get_logger("nodeagent.proxy")

SocketHandler = Callable[[socket.socket], Coroutine[Any, Any, None] | None]
"""Serves an accepted socket (a coroutine to run), or None when it handed it away."""


@dataclass(frozen=True)
class PodEndpoint:
    """What the proxy needs to know of an enrolled pod on its node."""

    namespace: str
    name: str
    uid: str
    netns: str
    ip: str
    ip6: str
    identity: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


async def _readable(listener: socket.socket) -> None:
    """Until a connection waits in `listener`'s backlog."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    fd = listener.fileno()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)
    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def track(tasks: set[asyncio.Task[None]], task: asyncio.Task[None],
          on_failure: Callable[[BaseException], None] | None = None) -> None:
    """Own a connection task: kept in `tasks` while it runs (a drain waits for them),
    its failure logged and reported to `on_failure`."""
    tasks.add(task)
    task.add_done_callback(_owned(tasks, on_failure))


def _owned(tasks: set[asyncio.Task[None]], on_failure: Callable[[BaseException], None] | None
           ) -> Callable[[asyncio.Task[None]], None]:
    """The owner of connection tasks: forgets a finished one, and logs (with the
    traceback) and counts one that failed, which would otherwise die unobserved."""
    def finished(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            return
        log.error("connection handler failed", error=f"{type(error).__name__}: {error}",
                  exc_info=error)
        if on_failure is not None:
            on_failure(error)
    return finished


async def accept_loop(listener: socket.socket, handler: SocketHandler,
                      tasks: set[asyncio.Task[None]],
                      on_failure: Callable[[BaseException], None] | None = None) -> None:
    """Accept until cancelled; each connection gets its own task, tracked in `tasks`;
    a task that fails is logged and reported to `on_failure` (a handler bug must not
    vanish as "Task exception was never retrieved").

    Cancellation only ever lands while waiting for the backlog, never between taking a
    connection out of it and starting its task: with `loop.sock_accept`, a stop (an
    agent draining for a restart) could cancel the wait after the kernel had handed
    over a connection, which was then dropped with a reset instead of being served or
    left in the backlog for the next agent."""
    listener.setblocking(False)
    while True:
        await _readable(listener)
        while True:  # everything waiting now, with no await in between
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                break
            except OSError as e:  # EMFILE and friends: back off instead of spinning
                log.warning("accept failed", error=str(e))
                await asyncio.sleep(0.05)
                break
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            work = handler(sock)
            if work is None:
                continue
            track(tasks, asyncio.create_task(work), on_failure)


@dataclass
class PodListeners:
    outbound_sockets: list[socket.socket] = field(default_factory=list)
    inbound_sockets: list[socket.socket] = field(default_factory=list)
    hbone_sockets: list[socket.socket] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)

    @classmethod
    def bind(cls, netns: str, key_prefix: str = "", source: Listeners | None = None
             ) -> PodListeners:
        """Listeners for one pod: taken over from `source` when a previous agent left
        them, else bound now (and handed to `source` for the next agent)."""
        self = cls()
        cookie = netns_cookie(netns)
        plan = [(self.outbound_sockets, h, OUTBOUND_PORT) for h in ("127.0.0.1", "::1")]
        plan += [(group, h, port) for h in ("0.0.0.0", "::")
                 for group, port in ((self.inbound_sockets, INBOUND_PORT),
                                     (self.hbone_sockets, HBONE_PORT))]
        try:
            for group, host, port in plan:
                key = f"{key_prefix}|{host}|{port}"
                sock = source.take(key, cookie) if source else None
                if sock is None:
                    sock = listening_socket(netns, host, port)
                    if source:
                        source.keep(key, sock)
                group.append(sock)
                self.keys.append(key)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Close our descriptors; a keeper's copies keep the sockets listening."""
        for sock in (*self.outbound_sockets, *self.inbound_sockets, *self.hbone_sockets):
            with contextlib.suppress(OSError):
                sock.close()
