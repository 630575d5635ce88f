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
from nodeagent.proxy.streams import listening_socket

log = structlog.get_logger("nodeagent.proxy")

SocketHandler = Callable[[socket.socket], Coroutine[Any, Any, None]]


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


async def accept_loop(listener: socket.socket, handler: SocketHandler,
                      tasks: set[asyncio.Task[None]]) -> None:
    """Accept until cancelled; each connection gets its own task, tracked in `tasks`."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            sock, _ = await loop.sock_accept(listener)
        except OSError as e:  # EMFILE and friends: back off instead of spinning
            log.warning("accept failed", error=str(e))
            await asyncio.sleep(0.05)
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = asyncio.create_task(handler(sock))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


@dataclass
class PodListeners:
    outbound_sockets: list[socket.socket] = field(default_factory=list)
    inbound_sockets: list[socket.socket] = field(default_factory=list)
    hbone_sockets: list[socket.socket] = field(default_factory=list)

    @classmethod
    def bind(cls, netns: str) -> PodListeners:
        self = cls()
        try:
            for host in ("127.0.0.1", "::1"):
                self.outbound_sockets.append(listening_socket(netns, host, OUTBOUND_PORT))
            for host in ("0.0.0.0", "::"):
                self.inbound_sockets.append(listening_socket(netns, host, INBOUND_PORT))
                self.hbone_sockets.append(listening_socket(netns, host, HBONE_PORT))
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for sock in (*self.outbound_sockets, *self.inbound_sockets, *self.hbone_sockets):
            with contextlib.suppress(OSError):
                sock.close()
