"""One am_sk_lookup instance per enrolled pod, made from a template without compiling.

Why: an sk_lookup program cannot tell which netns it runs in (no cgroup, no
bpf_get_netns_cookie), and the destination address does not say it either: a pod has
addresses nobody registered (its IPv6 link-local address, any address added later),
and keying capture by registered addresses let those reach the app around the proxy
(issue 18). So the pod's identity is built into its program: at load time the
compiled instructions are stored, relocatable, in the pinned am_templates map; at
enrollment any process holding the maps (the agent opens them without bcc) writes the
pod's cgroup id over the placeholder constant and loads the result (< 1 ms).
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Mapping

from ebpf import constants as C
from ebpf import libbpf
from ebpf.errors import BpfSyscallError, CompileError, EnrollmentError
from ebpf.layout import (
    INBOUND_DROP_REASONS,
    MAP_INBOUND_DROPS,
    MAP_TEMPLATES,
    MAPS,
    MAX_TEMPLATE_INSNS,
    SK_LOOKUP_POD_PLACEHOLDER,
    ProgTemplate,
)
from ebpf.maps import PinnedMap
from ebpf.pins import PinLayout

_LD_IMM64 = 0x18  # BPF_LD | BPF_IMM | BPF_DW: a 64-bit constant over two instructions
_PSEUDO_MAP_FD = 1  # src_reg of a ld_imm64 whose imm is a map fd
_INSN = struct.Struct("<BBhi")  # struct bpf_insn: code, dst:4|src:4, off, imm
PROG_NAME = b"am_sk_lookup"


def _insns(raw: bytes) -> list[tuple[int, int, int, int]]:
    if len(raw) % _INSN.size:
        raise CompileError(f"program of {len(raw)} bytes is not whole instructions")
    return [_INSN.unpack_from(raw, i) for i in range(0, len(raw), _INSN.size)]


def make_template(raw: bytes, map_names_by_fd: Mapping[int, str]) -> ProgTemplate:
    """The compiled instructions with map fds replaced by indices into MAPS and the
    placeholder located. Refuses anything it cannot relocate: a template that loads
    but reads the wrong map would be worse than no capture."""
    insns = _insns(raw)
    if len(insns) > MAX_TEMPLATE_INSNS:
        raise CompileError(f"am_sk_lookup has {len(insns)} instructions; the template "
                           f"holds {MAX_TEMPLATE_INSNS} (raise MAX_TEMPLATE_INSNS)")
    index = {spec.name: i for i, spec in enumerate(MAPS)}
    out = ProgTemplate(insn_cnt=len(insns))
    placeholders = []
    i = 0
    while i < len(insns):
        code, regs, off, imm = insns[i]
        if code == _LD_IMM64:
            src = regs >> 4
            lo, hi = imm & 0xFFFFFFFF, insns[i + 1][3] & 0xFFFFFFFF
            if src == _PSEUDO_MAP_FD:
                name = map_names_by_fd.get(imm)
                if name not in index:
                    raise CompileError(f"am_sk_lookup refers to map fd {imm}, which is "
                                       "none of the installation's maps")
                insns[i] = (code, regs, off, index[name])
            elif src == 0 and (hi << 32 | lo) == SK_LOOKUP_POD_PLACEHOLDER:
                placeholders.append(i)
            elif src != 0:
                raise CompileError(f"am_sk_lookup: 64-bit load kind {src} at {i} "
                                   "cannot be relocated")
            i += 2
        else:
            i += 1
    if len(placeholders) != 1:
        raise CompileError(f"am_sk_lookup must load AM_POD_PLACEHOLDER once, found "
                           f"{len(placeholders)} (did the compiler fold it?)")
    out.placeholder_at = placeholders[0]
    for n, insn in enumerate(insns):
        out.insns[n] = int.from_bytes(_INSN.pack(*insn), "little")
    return out


def instantiate(template: ProgTemplate, cgroup_id: int,
                map_fds_by_name: Mapping[str, int]) -> bytes:
    """The template's instructions for one pod: map indices back to this process's
    fds, the placeholder replaced by the pod's cgroup id."""
    raw = b"".join(int(template.insns[n]).to_bytes(8, "little")
                   for n in range(template.insn_cnt))
    insns = _insns(raw)
    i = 0
    while i < len(insns):
        code, regs, off, imm = insns[i]
        if code == _LD_IMM64:
            if regs >> 4 == _PSEUDO_MAP_FD:
                insns[i] = (code, regs, off, map_fds_by_name[MAPS[imm].name])
            i += 2
        else:
            i += 1
    at = template.placeholder_at
    lo, hi = cgroup_id & 0xFFFFFFFF, cgroup_id >> 32
    insns[at] = (*insns[at][:3], _signed32(lo))
    insns[at + 1] = (*insns[at + 1][:3], _signed32(hi))
    return b"".join(_INSN.pack(*insn) for insn in insns)


def _signed32(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


class _ProgLoadOpts(ctypes.Structure):
    """struct bpf_prog_load_opts of libbpf 1.1 (sz says how much of it we fill)."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("attempts", ctypes.c_int),
        ("expected_attach_type", ctypes.c_uint32),
        ("prog_btf_fd", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_ifindex", ctypes.c_uint32),
        ("kern_version", ctypes.c_uint32),
        ("attach_btf_id", ctypes.c_uint32),
        ("attach_prog_fd", ctypes.c_uint32),
        ("attach_btf_obj_fd", ctypes.c_uint32),
        ("fd_array", ctypes.c_void_p),
        ("func_info", ctypes.c_void_p),
        ("func_info_cnt", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32),
        ("line_info", ctypes.c_void_p),
        ("line_info_cnt", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_void_p),
    ]


_prog_load = libbpf._lib.bpf_prog_load
_prog_load.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p,
                       ctypes.c_size_t, ctypes.POINTER(_ProgLoadOpts)]
_prog_load.restype = ctypes.c_int


def load_instance(raw: bytes, what: str) -> int:
    """Load one pod's sk_lookup instance; its fd (the caller links, then closes it)."""
    log = ctypes.create_string_buffer(64 * 1024)
    opts = _ProgLoadOpts(sz=ctypes.sizeof(_ProgLoadOpts),
                         expected_attach_type=C.ATTACH_SK_LOOKUP,
                         log_size=len(log), log_buf=ctypes.addressof(log))
    buf = ctypes.create_string_buffer(raw, len(raw))
    fd = _prog_load(C.PROG_TYPE_SK_LOOKUP, PROG_NAME, b"GPL", buf, len(raw) // _INSN.size,
                    ctypes.byref(opts))
    if fd < 0:
        err = -fd if fd != -1 else ctypes.get_errno()
        raise BpfSyscallError(f"load {what}", err, log.value.decode(errors="replace")[-2000:])
    return fd


class InboundCapture:
    """The template and drop counter maps of one installation."""

    def __init__(self, pins: PinLayout) -> None:
        self.templates = PinnedMap(pins, MAP_TEMPLATES)
        try:
            self.drops_map = PinnedMap(pins, MAP_INBOUND_DROPS)
        except Exception:
            self.templates.close()
            raise

    def store_template(self, template: ProgTemplate) -> None:
        libbpf.map_update(self.templates.fd, ctypes.c_uint32(0), template,
                          "am_sk_lookup template")

    def instance(self, cgroup_id: int, map_fds_by_name: Mapping[str, int], what: str) -> int:
        """A loaded program serving the pod with this cgroup id (fd; caller closes)."""
        template = ProgTemplate()
        if not libbpf.map_lookup(self.templates.fd, ctypes.c_uint32(0), template) or (
            template.insn_cnt == 0
        ):
            raise EnrollmentError(
                f"{what}: no am_sk_lookup template in {self.templates.path}: the "
                "programs were loaded by an older agent; restart the node agent"
            )
        return load_instance(instantiate(template, cgroup_id, map_fds_by_name), what)

    def drops(self) -> dict[str, int]:
        """Connections am_sk_lookup refused, by reason (since the maps were created)."""
        out = {}
        for i, reason in enumerate(INBOUND_DROP_REASONS):
            value = ctypes.c_uint64()
            found = libbpf.map_lookup(self.drops_map.fd, ctypes.c_uint32(i), value)
            out[reason] = value.value if found else 0
        return out

    def close(self) -> None:
        self.templates.close()
        self.drops_map.close()
