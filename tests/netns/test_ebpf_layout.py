"""The pure parts of the eBPF layer: layouts, enrollment records, key spellings.
No root, no kernel: these run anywhere in milliseconds."""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ebpf import EnrolledPod, EnrollmentError
from ebpf import constants as C
from ebpf.cli import parser
from ebpf.enrollment import pod_config
from ebpf.errors import EbpfError
from ebpf.layout import (
    MAPS,
    STRUCTS,
    OrigDst,
    addr_bytes,
    addr_from_bytes,
    get_addr,
    render_c_header,
    set_addr,
)
from ebpf.original_dst import is_outbound_capture
from ebpf.pins import PinLayout
from ebpf.programs import PROGRAMS, program_source


def test_header_declares_every_struct_with_a_size_check_and_every_pinned_map() -> None:
    header = render_c_header(Path("/sys/fs/bpf/ambientmesh/c-n1"))
    for name, struct in STRUCTS:
        assert f"struct {name} {{" in header
        assert f"sizeof(struct {name}) == {ctypes.sizeof(struct)}" in header
    for spec in MAPS:
        assert re.search(
            rf'BPF_TABLE_PINNED\("{spec.kind}", .*, {spec.name}, {spec.max_entries}, '
            rf'"/sys/fs/bpf/ambientmesh/c-n1/maps/{spec.name}"\)', header)
        assert len(spec.name) <= 15, "kernel object names are at most 15 characters"
    assert f"#define AM_OUTBOUND_PORT {C.OUTBOUND_PORT}" in header
    assert f"#define AM_PROXY_MARK {C.PROXY_MARK}" in header


def test_program_source_has_every_program_and_no_bare_port_numbers() -> None:
    text = program_source(PinLayout("c-n1"))
    for spec in PROGRAMS:
        assert f"int {spec.name}(" in text
    body = text.split('#line 1 "common.bpf.h"', 1)[1]
    for number in ("15001", "15006", "15008", "1337"):
        assert number not in body, "constants belong in ebpf/constants.py"


def test_pod_config_zero_terminates_sorted_unique_exclusions() -> None:
    pod = EnrolledPod(name="demo/web", netns="x", cgroup_id=7, ips=("10.0.0.1",),
                      outbound_excluded_ports=(6379, 5432, 6379), inbound_excluded_ports=(22,),
                      capture_inbound=False)
    config = pod_config(pod, netns_cookie=99)
    assert config.netns_cookie == 99
    assert list(config.outbound_excluded)[:3] == [5432, 6379, 0]
    assert list(config.inbound_excluded)[:2] == [22, 0]
    assert config.flags == C.FLAG_CAPTURE_OUTBOUND


@pytest.mark.parametrize("kw, field", [
    ({"ips": ("not-an-ip",)}, "ips"),
    ({"outbound_excluded_ports": (0,)}, "outbound_excluded_ports"),
    ({"inbound_excluded_ports": (70000,)}, "inbound_excluded_ports"),
    ({"inbound_excluded_ports": tuple(range(1, 18))}, "at most 16"),
])
def test_enrolled_pod_rejects_bad_input_naming_pod_and_field(kw: dict, field: str) -> None:
    with pytest.raises(EnrollmentError, match=f"pod demo/web: .*{field}|{field}"):
        EnrolledPod(name="demo/web", netns="x", cgroup_id=1, **kw)
    with pytest.raises(EnrollmentError, match="cgroup_path or cgroup_id"):
        EnrolledPod(name="demo/web", netns="x")


def test_missing_cgroup_says_the_pod_may_be_gone(tmp_path: Path) -> None:
    pod = EnrolledPod(name="demo/web", netns="x", cgroup_path=tmp_path / "gone")
    with pytest.raises(EnrollmentError, match="does not exist"):
        pod.resolved_cgroup_id()


@given(st.ip_addresses())
def test_map_addresses_round_trip(ip: object) -> None:
    raw = addr_bytes(str(ip))
    assert len(raw) == 16
    family = C.AF_INET if ":" not in str(ip) else C.AF_INET6
    record = OrigDst()
    set_addr(record.addr, raw)
    assert addr_from_bytes(get_addr(record.addr), family) == str(ip)


def test_v4_is_stored_v4_mapped() -> None:
    assert addr_bytes("10.1.2.3") == bytes(10) + b"\xff\xff" + bytes([10, 1, 2, 3])


@pytest.mark.parametrize("local, expected", [
    (("127.0.0.1", 15001), True),
    (("::1", 15001, 0, 0), True),
    (("::ffff:127.0.0.1", 15001, 0, 0), True),
    (("10.1.1.2", 15001), False),
    (("127.0.0.1", 15006), False),
    (("fd00::2", 8080, 0, 0), False),
])
def test_outbound_capture_is_recognised_by_local_address(local: tuple, expected: bool) -> None:
    assert is_outbound_capture(local) is expected


@pytest.mark.parametrize("name", ["a.b", "", "x/y", "-lead"])
def test_pin_names_bpffs_would_refuse_are_rejected(name: str) -> None:
    with pytest.raises(EbpfError, match="invalid pin name"):
        PinLayout(name)


def test_cli_parses_enroll_with_exclusions() -> None:
    args = parser().parse_args([
        "enroll", "--pin-name", "c-n1", "--name", "demo/web", "--netns", "ns",
        "--cgroup-id", "5", "--ip", "10.0.0.2", "--exclude-outbound", "5432",
    ])
    assert args.exclude_outbound == [5432] and args.ip == ["10.0.0.2"]
