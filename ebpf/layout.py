"""Map layouts, declared once: ctypes structures the Python side reads and writes,
rendered into the C header the programs are compiled with.

Changing a struct or a map here changes both sides; a pinned map whose sizes no
longer match is refused at load time (MapLayoutMismatch) instead of being misread.
Addresses are 16 bytes in network order, IPv4 as v4-mapped (::ffff:a.b.c.d), so one
key type serves both families; ports are host byte order unless a field says otherwise.
"""

from __future__ import annotations

import ctypes
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from ebpf import constants as C

Addr16 = ctypes.c_uint32 * 4


class PodConfig(ctypes.Structure):
    """am_pods value, keyed by the pod's cgroup id (u64)."""

    _fields_ = [
        ("netns_cookie", ctypes.c_uint64),
        ("outbound_excluded", ctypes.c_uint16 * C.MAX_EXCLUDED_PORTS),
        ("inbound_excluded", ctypes.c_uint16 * C.MAX_EXCLUDED_PORTS),
        ("flags", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


class OrigDst(ctypes.Structure):
    """Where a captured connect() was going. family is that of the original address
    (a v4-mapped destination of an AF_INET6 socket is recorded as AF_INET)."""

    _fields_ = [
        ("addr", Addr16),
        ("port", ctypes.c_uint16),
        ("family", ctypes.c_uint16),
        ("_pad", ctypes.c_uint32),
    ]


class TupleKey(ctypes.Structure):
    """am_orig_tuple key: the captured client's side of the connection to the proxy,
    exactly what the proxy sees as the peer of the socket it accepted."""

    _fields_ = [
        ("netns_cookie", ctypes.c_uint64),
        ("addr", Addr16),
        ("port", ctypes.c_uint16),
        ("_pad0", ctypes.c_uint16),
        ("_pad1", ctypes.c_uint32),
    ]


class ListenerKey(ctypes.Structure):
    """am_listeners key: the pod (by netns cookie) and the address family served."""

    _fields_ = [
        ("netns_cookie", ctypes.c_uint64),
        ("family", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


# sk_lookup programs cannot call bpf_get_netns_cookie and see no cgroup, so nothing in
# their context says which pod's netns they run in. Each enrolled pod therefore gets its
# own instance of am_sk_lookup: the compiled program is kept as a template (am_templates)
# whose one 64-bit load of SK_LOOKUP_POD_PLACEHOLDER the loader replaces with the pod's
# cgroup id (ebpf/inbound.py).
SK_LOOKUP_POD_PLACEHOLDER = 0x616D5F706F645F3F  # "am_pod_?": no cgroup id is this large
MAX_TEMPLATE_INSNS = 1024

# Why am_sk_lookup refused a connection (am_inbound_drop index). Capture fails closed:
# in an enrolled netns a connection the program cannot hand to the proxy is dropped.
INBOUND_DROP_REASONS: tuple[str, ...] = ("no_pod", "no_listener", "assign_failed")


class ProgTemplate(ctypes.Structure):
    """am_templates value: a program's instructions (struct bpf_insn, 8 bytes each) as
    compiled, with every map reference (a 64-bit load of BPF_PSEUDO_MAP_FD) holding the
    map's index in MAPS instead of an fd, so any process holding the maps can load it."""

    _fields_ = [
        ("insn_cnt", ctypes.c_uint32),
        ("placeholder_at", ctypes.c_uint32),
        ("insns", ctypes.c_uint64 * MAX_TEMPLATE_INSNS),
    ]


@dataclass(frozen=True)
class MapSpec:
    name: str
    kind: str  # bcc table type
    map_type: int  # enum bpf_map_type, to validate a pinned map
    key: type[ctypes._SimpleCData] | type[ctypes.Structure]
    value: type[ctypes._SimpleCData] | type[ctypes.Structure]
    max_entries: int
    doc: str

    @property
    def key_size(self) -> int:
        return ctypes.sizeof(self.key)

    @property
    def value_size(self) -> int:
        return ctypes.sizeof(self.value)


MAP_PODS = MapSpec(
    "am_pods", "hash", 1, ctypes.c_uint64, PodConfig, C.MAX_PODS,
    "cgroup id -> PodConfig: which pods are enrolled and their exclusions",
)
MAP_ORIG_COOKIE = MapSpec(
    "am_orig_cookie", "lru_hash", 9, ctypes.c_uint64, OrigDst, C.MAX_ORIGINAL_DESTINATIONS,
    "client socket cookie -> OrigDst: written by connect4/6, read by getpeername and sockops",
)
MAP_ORIG_TUPLE = MapSpec(
    "am_orig_tuple", "lru_hash", 9, TupleKey, OrigDst, C.MAX_ORIGINAL_DESTINATIONS,
    "(netns cookie, client addr, client port) -> OrigDst: read by the proxy",
)
MAP_LISTENERS = MapSpec(
    "am_listeners", "sockhash", 18, ListenerKey, ctypes.c_uint64, 2 * C.MAX_PODS,
    "(netns cookie, family) -> the pod's inbound (15006) listening socket",
)
MAP_TEMPLATES = MapSpec(
    "am_templates", "array", 2, ctypes.c_uint32, ProgTemplate, 1,
    "0 -> the am_sk_lookup template each pod's instance is made from",
)
MAP_INBOUND_DROPS = MapSpec(
    "am_inbound_drop", "array", 2, ctypes.c_uint32, ctypes.c_uint64,
    len(INBOUND_DROP_REASONS),
    "reason -> connections am_sk_lookup refused (INBOUND_DROP_REASONS)",
)
MAPS: tuple[MapSpec, ...] = (
    MAP_PODS, MAP_ORIG_COOKIE, MAP_ORIG_TUPLE, MAP_LISTENERS,
    MAP_TEMPLATES, MAP_INBOUND_DROPS,
)
# Maps earlier versions pinned and no program reads any more: unpinned at load.
# am_inbound_ips (pod IP -> cgroup id) keyed inbound capture by destination address
# until capture took every address of the pod's netns (docs/ebpf.md).
RETIRED_MAPS: tuple[str, ...] = ("am_inbound_ips",)

STRUCTS: tuple[tuple[str, type[ctypes.Structure]], ...] = (
    ("am_pod_config", PodConfig),
    ("am_orig_dst", OrigDst),
    ("am_tuple_key", TupleKey),
    ("am_listener_key", ListenerKey),
    ("am_prog_template", ProgTemplate),
)

# The deepest cgroup level (root = 0) at which a pod can be enrolled: outbound capture
# looks up a task's ancestors at levels 1 to this one (am_task_pod in common.bpf.h),
# and enrollment refuses deeper pod cgroups. Kubelet pod cgroups sit at level 2-3
# (about 6 inside a kind node); 11 leaves room and bounds the unrolled walk.
MAX_POD_CGROUP_LEVEL = 11

_CTYPE_NAMES = {
    ctypes.c_uint8: "__u8",
    ctypes.c_uint16: "__u16",
    ctypes.c_uint32: "__u32",
    ctypes.c_uint64: "__u64",
}

_DEFINES: dict[str, int | str] = {
    "AM_OUTBOUND_PORT": C.OUTBOUND_PORT,
    "AM_INBOUND_PORT": C.INBOUND_PORT,
    "AM_HBONE_PORT": C.HBONE_PORT,
    "AM_PROXY_MARK": C.PROXY_MARK,
    "AM_MAX_EXCLUDED_PORTS": C.MAX_EXCLUDED_PORTS,
    "AM_AF_INET": C.AF_INET,
    "AM_AF_INET6": C.AF_INET6,
    "AM_IPPROTO_TCP": C.IPPROTO_TCP,
    "AM_LOOPBACK_IFINDEX": C.LOOPBACK_IFINDEX,
    "AM_FLAG_CAPTURE_OUTBOUND": C.FLAG_CAPTURE_OUTBOUND,
    "AM_FLAG_CAPTURE_INBOUND": C.FLAG_CAPTURE_INBOUND,
    "AM_MAX_POD_CGROUP_LEVEL": MAX_POD_CGROUP_LEVEL,
    "AM_POD_PLACEHOLDER": f"{SK_LOOKUP_POD_PLACEHOLDER:#x}ULL",
    **{f"AM_DROP_{reason.upper()}": i for i, reason in enumerate(INBOUND_DROP_REASONS)},
}


def _c_type(ctype: type) -> str:
    if ctype in _CTYPE_NAMES:
        return _CTYPE_NAMES[ctype]
    for known, name in _CTYPE_NAMES.items():
        if ctypes.sizeof(ctype) == ctypes.sizeof(known) and ctype.__name__ == known.__name__:
            return name
    for name, struct in STRUCTS:
        if ctype is struct:
            return f"struct {name}"
    raise TypeError(f"no C spelling for {ctype!r}")


def _c_field(name: str, ctype: type) -> str:
    length = getattr(ctype, "_length_", None)
    if length is not None:
        return f"{_c_type(ctype._type_)} {name}[{length}];"  # type: ignore[attr-defined]
    return f"{_c_type(ctype)} {name};"


def render_c_header(pin_dir: Path) -> str:
    """The C prelude: constants, structs (size-checked) and pinned map declarations."""
    lines = ["/* Generated by ebpf/layout.py: edit there, not here. */"]
    lines += [f"#define {name} {value}" for name, value in _DEFINES.items()]
    for cname, struct in STRUCTS:
        lines.append(f"struct {cname} {{")
        lines += [f"    {_c_field(f, t)}" for f, t in struct._fields_]  # type: ignore[misc]
        lines.append("};")
        lines.append(
            f"_Static_assert(sizeof(struct {cname}) == {ctypes.sizeof(struct)}, "
            f'"{cname} layout differs between C and Python");'
        )
    for spec in MAPS:
        path = pin_dir / "maps" / spec.name
        lines.append(
            f'BPF_TABLE_PINNED("{spec.kind}", {_c_type(spec.key)}, {_c_type(spec.value)}, '
            f'{spec.name}, {spec.max_entries}, "{path}");'
        )
    return "\n".join(lines) + "\n"


def addr_bytes(ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """16 bytes, network order, IPv4 as v4-mapped: the map spelling of an address."""
    parsed = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    if isinstance(parsed, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + parsed.packed).packed
    return parsed.packed


def addr_from_bytes(raw: bytes, family: int) -> str:
    """The text form of a 16-byte map address: dotted quad when family is AF_INET."""
    if family == C.AF_INET:
        return str(ipaddress.IPv4Address(raw[12:16]))
    return str(ipaddress.IPv6Address(raw))


def set_addr(field: ctypes.Array, raw: bytes) -> None:
    ctypes.memmove(ctypes.addressof(field), raw, 16)


def get_addr(field: ctypes.Array) -> bytes:
    return ctypes.string_at(ctypes.addressof(field), 16)
