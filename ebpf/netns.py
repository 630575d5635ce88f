"""Network namespace identity as the BPF programs see it: the netns cookie.

Kept here rather than borrowed from mesh.runtime so the ebpf package stands alone
(the node agent in Kubernetes mode has no local runtime). setns(2) runs in a
throwaway thread, so the caller's thread never changes namespace.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import struct
import threading
from pathlib import Path

from ebpf.constants import SO_NETNS_COOKIE
from ebpf.errors import EbpfError

NETNS_RUN_DIR = Path("/var/run/netns")
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def netns_path(netns: str | Path) -> Path:
    """A bare name is a namespace under /var/run/netns (as `ip netns` names them)."""
    path = Path(netns)
    return path if path.is_absolute() else NETNS_RUN_DIR / path


def socket_netns_cookie(sock: socket.socket) -> int:
    """The cookie of the namespace a socket lives in (bpf_get_netns_cookie's value)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
    return int(struct.unpack("=Q", raw)[0])


def netns_cookie(netns: str | Path) -> int:
    """The cookie of a namespace given by name or path."""
    path = netns_path(netns)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise EbpfError(f"cannot open network namespace {path}: {exc.strerror}") from exc
    result: list[int] = []
    failure: list[str] = []

    def probe() -> None:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            failure.append(os.strerror(ctypes.get_errno()))
            return
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            result.append(socket_netns_cookie(sock))

    try:
        thread = threading.Thread(target=probe, name="netns-cookie")
        thread.start()
        thread.join()
    finally:
        os.close(fd)
    if failure or not result:
        raise EbpfError(f"cannot enter network namespace {path}: {failure or 'no result'}")
    return result[0]
