"""The am_sk_lookup template (ebpf/inbound.py) without a kernel: map references and the
pod placeholder are relocated exactly, and what cannot be relocated is refused."""

from __future__ import annotations

import struct

import pytest

from ebpf.errors import CompileError
from ebpf.inbound import instantiate, make_template
from ebpf.layout import MAPS, SK_LOOKUP_POD_PLACEHOLDER

INSN = struct.Struct("<BBhi")


def ld_imm64(dst: int, src: int, value: int) -> bytes:
    lo, hi = value & 0xFFFFFFFF, value >> 32
    signed = [v - (1 << 32) if v >= 1 << 31 else v for v in (lo, hi)]
    return INSN.pack(0x18, (src << 4) | dst, 0, signed[0]) + INSN.pack(0, 0, 0, signed[1])


def mov(dst: int, imm: int) -> bytes:
    return INSN.pack(0xB7, dst, 0, imm)


def program(placeholders: int = 1, map_fd: int = 7) -> bytes:
    body = mov(0, 0) + ld_imm64(1, 1, map_fd)
    body += b"".join(ld_imm64(2, 0, SK_LOOKUP_POD_PLACEHOLDER) for _ in range(placeholders))
    body += ld_imm64(3, 0, 0x1122334455667788)  # an ordinary 64-bit constant: untouched
    return body + INSN.pack(0x95, 0, 0, 0)  # exit


def insns(raw: bytes) -> list[tuple[int, int, int, int]]:
    return [INSN.unpack_from(raw, i) for i in range(0, len(raw), 8)]


def value_at(raw: bytes, i: int) -> int:
    ins = insns(raw)
    return (ins[i][3] & 0xFFFFFFFF) | (ins[i + 1][3] & 0xFFFFFFFF) << 32


def test_instance_gets_the_pods_cgroup_id_and_this_processes_map_fds() -> None:
    listeners = next(i for i, spec in enumerate(MAPS) if spec.name == "am_listeners")
    template = make_template(program(), {7: "am_listeners"})
    assert template.insn_cnt == 8 and template.placeholder_at == 3
    assert insns(bytes(template.insns)[:64])[1][3] == listeners  # fd -> index in MAPS
    cgroup_id = 0xDEADBEEF12
    raw = instantiate(template, cgroup_id, {spec.name: 100 + i for i, spec in enumerate(MAPS)})
    assert len(raw) == len(program())
    assert insns(raw)[1][3] == 100 + listeners  # index -> this process's fd
    assert value_at(raw, 3) == cgroup_id
    assert value_at(raw, 5) == 0x1122334455667788
    assert [insns(raw)[i] for i in (0, 7)] == [insns(program())[i] for i in (0, 7)]


def test_a_large_cgroup_id_round_trips_through_the_signed_immediates() -> None:
    template = make_template(program(), {7: "am_pods"})
    raw = instantiate(template, (1 << 64) - 2, {spec.name: 3 for spec in MAPS})
    assert value_at(raw, 3) == (1 << 64) - 2


@pytest.mark.parametrize("count", [0, 2])
def test_the_placeholder_must_appear_exactly_once(count: int) -> None:
    with pytest.raises(CompileError, match=f"found {count}"):
        make_template(program(placeholders=count), {7: "am_pods"})


def test_a_reference_to_an_unknown_map_is_refused() -> None:
    with pytest.raises(CompileError, match="map fd 9"):
        make_template(program(map_fd=9), {7: "am_pods"})


def test_an_unrelocatable_64_bit_load_is_refused() -> None:
    raw = program() + ld_imm64(4, 2, 5)  # BPF_PSEUDO_MAP_VALUE
    with pytest.raises(CompileError, match="cannot be relocated"):
        make_template(raw, {7: "am_pods"})
