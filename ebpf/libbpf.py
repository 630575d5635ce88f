"""ctypes access to the few libbpf calls bcc does not wrap: pin, get, link create /
update / detach, map element access, object info, attachment queries.

libbcc already links libbpf.so.1, so this adds no dependency. Every call raises
BpfSyscallError with the errno instead of returning a negative number.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from dataclasses import dataclass

from ebpf.errors import BpfSyscallError, EbpfError

BPF_ANY = 0
BPF_NOEXIST = 1


def _load() -> ctypes.CDLL:
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise EbpfError(
            f"cannot load libbpf ({name}): install libbpf1 (a dependency of libbpfcc)"
        ) from exc


_lib = _load()
_vp = ctypes.c_void_p
for _name, _args in {
    "bpf_obj_pin": [ctypes.c_int, ctypes.c_char_p],
    "bpf_obj_get": [ctypes.c_char_p],
    "bpf_link_create": [ctypes.c_int, ctypes.c_int, ctypes.c_int, _vp],
    "bpf_link_update": [ctypes.c_int, ctypes.c_int, _vp],
    "bpf_link_detach": [ctypes.c_int],
    "bpf_map_update_elem": [ctypes.c_int, _vp, _vp, ctypes.c_uint64],
    "bpf_map_lookup_elem": [ctypes.c_int, _vp, _vp],
    "bpf_map_delete_elem": [ctypes.c_int, _vp],
    "bpf_map_lookup_and_delete_elem": [ctypes.c_int, _vp, _vp],
    "bpf_map_get_next_key": [ctypes.c_int, _vp, _vp],
    "bpf_obj_get_info_by_fd": [ctypes.c_int, _vp, ctypes.POINTER(ctypes.c_uint32)],
    "bpf_prog_query": [
        ctypes.c_int, ctypes.c_int, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32),
        ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_uint32),
    ],
}.items():
    _fn = getattr(_lib, _name)
    _fn.argtypes = _args
    _fn.restype = ctypes.c_int


def _check(op: str, ret: int, hint: str = "") -> int:
    if ret < 0:
        raise BpfSyscallError(op, -ret if ret != -1 else ctypes.get_errno(), hint)
    return ret


def _ref(obj: ctypes._CData | None) -> int | None:
    return None if obj is None else ctypes.addressof(obj)


def obj_pin(fd: int, path: str) -> None:
    _check(f"pin {path}", _lib.bpf_obj_pin(fd, path.encode()))


def obj_get(path: str) -> int:
    """An fd for a pinned object (program, map or link)."""
    return _check(f"open pinned {path}", _lib.bpf_obj_get(path.encode()))


def link_create(prog_fd: int, target_fd: int, attach_type: int, what: str) -> int:
    return _check(f"attach {what}", _lib.bpf_link_create(prog_fd, target_fd, attach_type, None))


def link_update(link_fd: int, prog_fd: int, what: str) -> None:
    """Swap the program behind a link in one step: no moment without a program."""
    _check(f"replace program of {what}", _lib.bpf_link_update(link_fd, prog_fd, None))


def link_detach(link_fd: int, what: str) -> None:
    _check(f"detach {what}", _lib.bpf_link_detach(link_fd))


def map_update(fd: int, key: ctypes._CData, value: ctypes._CData, what: str,
               flags: int = BPF_ANY) -> None:
    _check(f"update {what}", _lib.bpf_map_update_elem(fd, _ref(key), _ref(value), flags))


def map_lookup(fd: int, key: ctypes._CData, value: ctypes._CData) -> bool:
    """Fill `value`; False when the key is absent."""
    ret = _lib.bpf_map_lookup_elem(fd, _ref(key), _ref(value))
    if ret == -2 or (ret == -1 and ctypes.get_errno() == 2):
        return False
    _check("map lookup", ret)
    return True


def map_take(fd: int, key: ctypes._CData, value: ctypes._CData) -> bool:
    """Fill `value` and delete the element in one syscall (no second reader can get
    it); False when the key is absent."""
    ret = _lib.bpf_map_lookup_and_delete_elem(fd, _ref(key), _ref(value))
    if ret == -2 or (ret == -1 and ctypes.get_errno() == 2):
        return False
    _check("map lookup and delete", ret)
    return True


def map_delete(fd: int, key: ctypes._CData, what: str) -> bool:
    """False when the key was already absent."""
    ret = _lib.bpf_map_delete_elem(fd, _ref(key))
    if ret == -2 or (ret == -1 and ctypes.get_errno() == 2):
        return False
    _check(f"delete {what}", ret)
    return True


def map_next_key(fd: int, key: ctypes._CData | None, next_key: ctypes._CData) -> bool:
    ret = _lib.bpf_map_get_next_key(fd, _ref(key), _ref(next_key))
    if ret == -2 or (ret == -1 and ctypes.get_errno() == 2):
        return False
    _check("map iteration", ret)
    return True


def _info(fd: int, size: int = 256) -> bytes:
    buf = ctypes.create_string_buffer(size)
    length = ctypes.c_uint32(size)
    _check("read object info", _lib.bpf_obj_get_info_by_fd(fd, buf, ctypes.byref(length)))
    return buf.raw


@dataclass(frozen=True)
class MapInfo:
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int


def map_info(fd: int) -> MapInfo:
    t, id_, k, v, m = struct.unpack_from("=5I", _info(fd))
    return MapInfo(t, id_, k, v, m)


@dataclass(frozen=True)
class ProgInfo:
    type: int
    id: int
    name: str


def prog_info(fd: int) -> ProgInfo:
    raw = _info(fd)
    t, id_ = struct.unpack_from("=2I", raw)
    return ProgInfo(t, id_, raw[64:80].split(b"\0", 1)[0].decode())


@dataclass(frozen=True)
class LinkInfo:
    type: int
    id: int
    prog_id: int
    target: int  # cgroup id for cgroup links, netns inode for netns links
    attach_type: int


LINK_TYPE_CGROUP = 3
LINK_TYPE_NETNS = 5


def link_info(fd: int) -> LinkInfo:
    raw = _info(fd)
    t, id_, prog_id = struct.unpack_from("=3I", raw)
    if t == LINK_TYPE_CGROUP:
        target, attach = struct.unpack_from("=QI", raw, 16)
    elif t == LINK_TYPE_NETNS:
        target, attach = struct.unpack_from("=II", raw, 16)
    else:
        target, attach = 0, 0
    return LinkInfo(t, id_, prog_id, target, attach)


def prog_query(target_fd: int, attach_type: int) -> list[int]:
    """Ids of the programs attached to a cgroup (or netns) for one attach type."""
    ids = (ctypes.c_uint32 * 64)()
    count = ctypes.c_uint32(64)
    flags = ctypes.c_uint32(0)
    _check(
        "query attached programs",
        _lib.bpf_prog_query(target_fd, attach_type, 0, ctypes.byref(flags), ids,
                            ctypes.byref(count)),
    )
    return list(ids[: count.value])


def close(fd: int) -> None:
    os.close(fd)
