"""One typed accessor per pinned map, over plain map fds (no bcc needed), so a
process that only reads or enrolls — a proxy, `ambientctl`, the CLI — never compiles.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator
from pathlib import Path

from ebpf import libbpf
from ebpf.errors import BpfSyscallError, MapLayoutMismatch, NotInstalled
from ebpf.layout import (
    MAP_LISTENERS,
    MAP_ORIG_COOKIE,
    MAP_ORIG_TUPLE,
    MAP_PODS,
    ListenerKey,
    MapSpec,
    OrigDst,
    PodConfig,
    TupleKey,
    addr_bytes,
    set_addr,
)
from ebpf.pins import PinLayout


class PinnedMap:
    """An open pinned map, checked against the layout this code was built for."""

    def __init__(self, pins: PinLayout, spec: MapSpec) -> None:
        self.spec = spec
        self.path = pins.map(spec.name)
        try:
            self.fd = libbpf.obj_get(str(self.path))
        except BpfSyscallError as exc:
            raise NotInstalled(str(pins.dir)) from exc
        info = libbpf.map_info(self.fd)
        want = (spec.map_type, spec.key_size, spec.value_size, spec.max_entries)
        got = (info.type, info.key_size, info.value_size, info.max_entries)
        if want != got:
            libbpf.close(self.fd)
            raise MapLayoutMismatch(
                str(self.path), f"type/key/value/entries {got}, expected {want}", pins.name
            )
        self.id = info.id

    def keys(self) -> Iterator[ctypes._CData]:
        key: ctypes._CData | None = None
        while True:
            nxt = self.spec.key()
            if not libbpf.map_next_key(self.fd, key, nxt):
                return
            yield nxt
            key = nxt

    def count(self) -> int:
        return sum(1 for _ in self.keys())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            libbpf.close(self.fd)
        self.fd = -1


class PodTable(PinnedMap):
    def __init__(self, pins: PinLayout) -> None:
        super().__init__(pins, MAP_PODS)

    def put(self, cgroup_id: int, config: PodConfig, pod: str) -> None:
        libbpf.map_update(self.fd, ctypes.c_uint64(cgroup_id), config, f"pod {pod} config")

    def get(self, cgroup_id: int) -> PodConfig | None:
        value = PodConfig()
        return value if libbpf.map_lookup(self.fd, ctypes.c_uint64(cgroup_id), value) else None

    def remove(self, cgroup_id: int, pod: str) -> bool:
        return libbpf.map_delete(self.fd, ctypes.c_uint64(cgroup_id), f"pod {pod} config")


class OriginalDestinationTable(PinnedMap):
    """(netns cookie, client address, client port) -> where the client was going."""

    def __init__(self, pins: PinLayout) -> None:
        super().__init__(pins, MAP_ORIG_TUPLE)

    def take(self, netns_cookie: int, client_ip: str, client_port: int) -> OrigDst | None:
        """The record of one captured connection, removed as it is read: a record
        answers exactly one accepted connection, so a later connection that reuses the
        client port without being captured (the proxy dialling its own 15001, an app
        connecting to 15001 directly) finds nothing instead of a stale destination."""
        key = TupleKey(netns_cookie=netns_cookie, port=client_port)
        set_addr(key.addr, addr_bytes(client_ip))
        value = OrigDst()
        return value if libbpf.map_take(self.fd, key, value) else None


class CaptureCookieTable(PinnedMap):
    """Client socket cookie -> original destination (getpeername's source)."""

    def __init__(self, pins: PinLayout) -> None:
        super().__init__(pins, MAP_ORIG_COOKIE)


class ListenerTable(PinnedMap):
    """SOCKHASH of inbound listeners. The kernel drops an entry when its socket closes."""

    def __init__(self, pins: PinLayout) -> None:
        super().__init__(pins, MAP_LISTENERS)

    def put(self, netns_cookie: int, family: int, sock_fd: int, what: str) -> None:
        key = ListenerKey(netns_cookie=netns_cookie, family=family)
        libbpf.map_update(self.fd, key, ctypes.c_uint64(sock_fd), what)

    def remove(self, netns_cookie: int, family: int) -> bool:
        key = ListenerKey(netns_cookie=netns_cookie, family=family)
        return libbpf.map_delete(self.fd, key, "inbound listener")


class MapSet:
    """Every map of one installation, opened together."""

    def __init__(self, pins: PinLayout) -> None:
        opened: list[PinnedMap] = []
        try:
            self.pods = PodTable(pins)
            opened.append(self.pods)
            self.original = OriginalDestinationTable(pins)
            opened.append(self.original)
            self.capture_cookies = CaptureCookieTable(pins)
            opened.append(self.capture_cookies)
            self.listeners = ListenerTable(pins)
            opened.append(self.listeners)
        except Exception:
            for m in opened:
                m.close()
            raise
        self._all = opened

    def close(self) -> None:
        for m in self._all:
            m.close()


def validate_pinned(pins: PinLayout) -> None:
    """Refuse to compile against pinned maps of another layout (bcc would reuse them)."""
    for spec in (MAP_PODS, MAP_ORIG_COOKIE, MAP_ORIG_TUPLE, MAP_LISTENERS):
        if Path(pins.map(spec.name)).exists():
            PinnedMap(pins, spec).close()
