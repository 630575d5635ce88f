"""Sockets the proxy opens on a pod's behalf: created inside that pod's netns and
carrying the proxy mark, so the pod's capture programs never redirect them (no loops).
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from ebpf.constants import PROXY_MARK
from mesh.runtime.netns import in_netns


def _socket(netns: str | Path | None, family: int) -> socket.socket:
    if netns is None:
        return socket.socket(family, socket.SOCK_STREAM)
    with in_netns(netns):
        return socket.socket(family, socket.SOCK_STREAM)


def marked_socket(netns: str | Path | None, family: int) -> socket.socket:
    """A non-blocking TCP socket in `netns`, marked so capture ignores it."""
    sock = _socket(netns, family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, PROXY_MARK)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


async def dial(
    netns: str | Path | None, host: str, port: int, timeout: float = 5.0
) -> socket.socket:
    """Connect from inside `netns` (the pod the connection belongs to)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = marked_socket(netns, family)
    try:
        async with asyncio.timeout(timeout):
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def listening_socket(
    netns: str | Path | None, host: str, port: int, backlog: int = 1024
) -> socket.socket:
    """A listener inside `netns` (the proxy's listeners live in the pods' namespaces)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = _socket(netns, family)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, PROXY_MARK)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock
