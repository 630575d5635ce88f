"""Network namespace helpers: enter one for the current thread, read its cookie.

setns(2) applies to the calling thread only, which is exactly what the node proxy
needs: it opens a listener inside a pod's namespace and comes straight back, and the
socket stays bound to the namespace it was created in (ztunnel's in-pod model).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NETNS_RUN_DIR = Path("/var/run/netns")
CLONE_NEWNET = 0x40000000
SO_NETNS_COOKIE = 71

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class NetnsError(OSError):
    """A network namespace could not be entered or read."""


def netns_path(netns: str | Path) -> Path:
    """A bare name means a namespace under /var/run/netns, as `ip netns` names them."""
    path = Path(netns)
    return path if path.is_absolute() else NETNS_RUN_DIR / path


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(err, f"setns failed: {os.strerror(err)}")


@contextmanager
def in_netns(netns: str | Path) -> Iterator[None]:
    """Run the body with the current thread inside `netns`, then come back."""
    target = netns_path(netns)
    try:
        target_fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsError(2, f"network namespace {target} does not exist") from None
    own_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target_fd)
        try:
            yield
        finally:
            _setns(own_fd)
    finally:
        os.close(target_fd)
        os.close(own_fd)


def socket_in(
    netns: str | Path, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM
) -> socket.socket:
    """A socket that lives in `netns`, whatever thread uses it later."""
    with in_netns(netns):
        return socket.socket(family, type)


def cookie_of(sock: socket.socket) -> int:
    """The namespace cookie of the netns a socket lives in (what BPF programs see)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
    return int(struct.unpack("=Q", raw)[0])


def netns_cookie(netns: str | Path) -> int:
    """The cookie of a named namespace, as bpf_get_netns_cookie() returns it."""
    with socket_in(netns, socket.AF_INET, socket.SOCK_DGRAM) as sock:
        return cookie_of(sock)


def write_sysctl(netns: str | Path, key: str, value: str) -> None:
    """Set a per-namespace sysctl (net.*) inside `netns`."""
    path = "/proc/sys/" + key.replace(".", "/")
    with in_netns(netns), open(path, "w") as f:
        f.write(value)
